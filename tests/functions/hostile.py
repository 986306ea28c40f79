"""A hostile test function: `?do=<behaviour>` picks how it breaks (tests/test_e2e_fault_matrix.py).

`?do=ok` is the well-behaved call: it returns {"identity": <the instance's identity>} (see
instance_id.py), after holding its instance for `?hold=` seconds if given. Every process a
behaviour starts becomes a `sleep` whose argv[0] is `?tag=`: the tests find them by that tag on
the host's process list (a pid seen inside the instance's PID namespace means nothing there) and
check that every one is gone.
"""

import ctypes
import fcntl
import json
import os
import shutil
import signal
import stat
import sys
import threading
import time

from instance_id import identity

MB = 1024 * 1024
FORK_BOMB_CHILDREN = 50
STRAY_LIFETIME_S = 60
LEAK_PAUSE_S = 0.005
STDOUT_CHUNKS = 50
STDOUT_CHUNK_CHARS = 1_000_000
BODY_BYTES = 10 * MB
CHATTER_INTERVAL_S = 0.01
CHATTER_LINES = 100
GARBAGE = b"\xc1" * 100  # 0xc1 is never valid msgpack
SLEEP = shutil.which("sleep") or "/bin/sleep"


class HostileFailure(Exception):
    """What `do=raise` throws, with a class name the tests can recognise."""


def ok(query):
    """The well-behaved answer: the instance's identity (after `?hold=` seconds)."""
    time.sleep(float(query.get("hold", 0)))
    return {"statusCode": 200, "body": json.dumps({"identity": identity()})}


def spin():
    """Busy-loop until killed."""
    while True:
        pass


def fork_sleeper(tag):
    """Fork a child that becomes `sleep STRAY_LIFETIME_S` with `tag` as its argv[0]."""
    if os.fork() == 0:
        try:
            os.execv(SLEEP, [tag, str(STRAY_LIFETIME_S)])
        finally:
            os._exit(127)


def start_daemon(tag):
    """Double-fork a tagged sleeper in a session of its own; return once it sleeps."""
    read_end, write_end = os.pipe()  # not inherited by exec: EOF once the sleeper has started
    child = os.fork()
    if child == 0:
        try:
            os.close(read_end)
            os.setsid()
            fork_sleeper(tag)
        finally:
            os._exit(0)
    os.close(write_end)
    os.waitpid(child, 0)
    try:
        os.read(read_end, 1)
    finally:
        os.close(read_end)


def pipe_write_fds():
    """The fds from 3 up that are pipes open for writing (the worker's frame pipe among them)."""
    found = []
    for fd in range(3, 256):
        try:
            is_pipe = stat.S_ISFIFO(os.fstat(fd).st_mode)
            mode = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
        except OSError:
            continue
        if is_pipe and mode == os.O_WRONLY:
            found.append(fd)
    return found


def chatter():
    """Print a line every CHATTER_INTERVAL_S, CHATTER_LINES times."""
    for number in range(CHATTER_LINES):
        print(f"thread still running after return: line {number}")
        time.sleep(CHATTER_INTERVAL_S)


def do_raise(query):
    raise HostileFailure("hostile function raised")


def do_exit(query):
    sys.exit(3)


def do_os_exit(query):
    os._exit(1)


def do_sigkill(query):
    os.kill(os.getpid(), signal.SIGKILL)


def do_segfault(query):
    ctypes.string_at(0)


def do_loop(query):
    spin()


def do_sleep(query):
    time.sleep(STRAY_LIFETIME_S)
    return ok(query)


def do_ignore_sigterm(query):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    spin()


def do_memory_bomb(query):
    hog = bytearray(1 << 30)
    return {"statusCode": 200, "body": str(len(hog))}


def do_slow_leak(query):
    chunks = []
    while True:
        chunks.append(bytearray(MB))
        time.sleep(LEAK_PAUSE_S)


def do_fork_bomb(query):
    for _ in range(FORK_BOMB_CHILDREN):
        fork_sleeper(query["tag"])
    spin()


def do_daemon_loop(query):
    start_daemon(query["tag"])
    spin()


def do_daemon_return(query):
    start_daemon(query["tag"])
    return ok(query)


def do_close_fds(query):
    os.closerange(3, 256)
    return ok(query)


def do_garbage(query):
    for fd in pipe_write_fds():
        os.write(fd, GARBAGE)
    return ok(query)


def do_big_stdout(query):
    for _ in range(STDOUT_CHUNKS):
        sys.stdout.write("x" * STDOUT_CHUNK_CHARS)
    sys.stdout.flush()
    return ok(query)


def do_big_body(query):
    return {"statusCode": 200, "body": "x" * BODY_BYTES}


def do_unserializable(query):
    return {"statusCode": 200, "body": object()}


def do_thread(query):
    threading.Thread(target=chatter, daemon=True).start()
    return ok(query)


BEHAVIOURS = {
    "ok": ok,
    "raise": do_raise,
    "exit": do_exit,
    "os_exit": do_os_exit,
    "sigkill": do_sigkill,
    "segfault": do_segfault,
    "loop": do_loop,
    "sleep": do_sleep,
    "ignore_sigterm": do_ignore_sigterm,
    "memory_bomb": do_memory_bomb,
    "slow_leak": do_slow_leak,
    "fork_bomb": do_fork_bomb,
    "daemon_loop": do_daemon_loop,
    "daemon_return": do_daemon_return,
    "close_fds": do_close_fds,
    "garbage": do_garbage,
    "big_stdout": do_big_stdout,
    "big_body": do_big_body,
    "unserializable": do_unserializable,
    "thread": do_thread,
}


def handler(event, context):
    """Behave as `?do=` says."""
    query = event["queryStringParameters"]
    return BEHAVIOURS[query["do"]](query)
