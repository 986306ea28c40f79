"""A test function for tests/test_e2e_resilience.py: `?do=` picks what a call does."""

import fcntl
import json
import os
import stat
import subprocess
import sys
import threading
import time

import msgpack
from instance_id import identity

STRAY_LIFETIME_S = 120


class BadStrError(Exception):
    """An exception whose message cannot be had: its __str__ raises."""

    def __str__(self):
        raise RuntimeError("no str for you")


def identity_answer():
    """A 200 answer naming the instance's identity (see instance_id.py)."""
    return {"statusCode": 200, "body": json.dumps({"identity": identity()})}


def do_sleep(query):
    """Sleep `?seconds=`, print `?say=` and a line of `?pad=` characters if given, answer the
    instance's identity."""
    time.sleep(float(query.get("seconds", 0)))
    if "say" in query:
        print(query["say"], flush=True)
    if "pad" in query:
        print("p" * int(query["pad"]), flush=True)
    return identity_answer()


def do_crash(query):
    """Sleep `?seconds=`, then end the instance."""
    time.sleep(float(query.get("seconds", 0)))
    os._exit(3)


def do_fork_return(query):
    """Fork; the child returns from the handler too, a moment after the parent."""
    if os.fork() == 0:
        time.sleep(0.2)
    return identity_answer()


def do_stray_reply(query):
    """Return, and 0.2 s later write a well-formed second reply to this call (seq 1: the
    instance's first call) into the runtime's frame pipe, as a forked child would."""

    def write_again():
        time.sleep(0.2)
        # RESPONSE, call 1, peak 0, no output, status 200, no headers, body (worker/protocol.py)
        frame = msgpack.packb([12, 1, 0, 0, 200, b"", b"stray"], use_bin_type=True)
        for fd in range(3, 64):
            try:
                is_pipe = stat.S_ISFIFO(os.fstat(fd).st_mode)
                writable = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY
            except OSError:
                continue
            if is_pipe and writable:
                os.write(fd, frame)

    threading.Thread(target=write_again).start()
    return identity_answer()


def do_bad_str(query):
    raise BadStrError()


def do_detach(query):
    """Start a sleeper (for `?seconds=`) in a session of its own (a daemon), named by `?tag=`
    on its command line so that the test can find it from outside any namespace, and return
    at once."""
    lifetime_s = float(query.get("seconds", STRAY_LIFETIME_S))
    subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({lifetime_s})",
                      query["tag"]], start_new_session=True, stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return identity_answer()


def do_orphan(query):
    """Leave an orphan: a child starts a sleeper (for `?seconds=`, tagged `?tag=`) and exits,
    so that the sleeper is re-parented to the nearest subreaper (the supervisor, outside ns)."""
    sleeper = [sys.executable, "-c", f"import time; time.sleep({float(query['seconds'])})",
               query["tag"]]
    starter = f"import subprocess; subprocess.Popen({sleeper!r}, start_new_session=True)"
    subprocess.run([sys.executable, "-c", starter], check=True)
    return identity_answer()


BEHAVIOURS = {
    "sleep": do_sleep,
    "crash": do_crash,
    "fork_return": do_fork_return,
    "stray_reply": do_stray_reply,
    "bad_str": do_bad_str,
    "detach": do_detach,
    "orphan": do_orphan,
}


def handler(event, context):
    """Behave as `?do=` says; an async (raw) call's body is the `do`."""
    if isinstance(event, str):
        return do_sleep(json.loads(event))
    query = event["queryStringParameters"]
    return BEHAVIOURS[query.get("do", "sleep")](query)
