"""The `soak` scenario: `?do=` picks a well-behaved call or one way of misbehaving.

Good calls: `ok` returns at once, `sleep` waits 20-50 ms. Hostile calls: `raise`, `bad_str`
(an exception whose `__str__` raises too), `crash` (`os._exit`), `timeout` (runs past the
supervisor's `--timeout`, sleeping rather than spinning so that a 2-core machine keeps its
CPU for the rest), `memory` (allocates past `--memory`), `fork_return` (forks; parent and child
both return into the runtime), `big_stdout` (a few MB without a newline), `big_body` (a body
over the 3.5 MB response limit), `detach` (double-forks a grandchild in its own session that
outlives the call by a couple of seconds, then returns).
"""

import os
import random
import sys
import time

MB = 1024 * 1024
SLEEP_RANGE_S = (0.02, 0.05)
TIMEOUT_NAP_S = 0.01
STDOUT_BYTES = 2 * MB
BODY_BYTES = 4 * MB
DETACH_S = 2.0


class BadStr(Exception):
    """An exception that cannot even say what it is."""

    def __str__(self):
        raise RuntimeError("BadStr.__str__ refuses")


def _ok(text="ok"):
    return {"statusCode": 200, "headers": {"Content-Type": "text/plain"}, "body": text}


def do_ok():
    return _ok()


def do_sleep():
    time.sleep(random.uniform(*SLEEP_RANGE_S))
    return _ok("slept")


def do_raise():
    raise ValueError("soak: the function raised")


def do_bad_str():
    raise BadStr()


def do_crash():
    os._exit(1)


def do_timeout():
    while True:
        time.sleep(TIMEOUT_NAP_S)


def do_memory():
    hog = []
    while True:
        hog.append(bytearray(MB))  # zero-filled, so every page is touched


def do_fork_return():
    os.fork()
    return _ok("forked")


def do_big_stdout():
    sys.stdout.write("x" * STDOUT_BYTES)
    sys.stdout.flush()
    return _ok("printed")


def do_big_body():
    return _ok("x" * BODY_BYTES)


def do_detach():
    child = os.fork()
    if child == 0:
        try:
            os.setsid()
            if os.fork() == 0:
                time.sleep(DETACH_S)
        finally:
            os._exit(0)
    os.waitpid(child, 0)
    return _ok("detached")


BEHAVIOURS = {name[3:]: function for name, function in globals().items()
              if name.startswith("do_")}


def handler(event, context):
    return BEHAVIOURS[(event.get("queryStringParameters") or {}).get("do", "ok")]()
