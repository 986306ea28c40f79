"""A hostile test function that tries to get out of its sandbox (tests/test_e2e_sandbox.py).

`?do=` picks the attempt; each answers what happened as JSON: "ok" when the attempt worked, or
the name of the error that stopped it. Every answer also says who ran it (`uid`, and an `id`
unique to the instance's process), so that the tests can tell instances apart.
"""

import errno
import json
import os
import random
import signal
import time

BORN = random.getrandbits(64)
TMP_SECRET = "tmp-secret"


def outcome(attempt):
    """Run `attempt()`; "ok" if it worked, else the errno name (or exception) that stopped it."""
    try:
        result = attempt()
    except OSError as exc:
        return errno.errorcode.get(exc.errno, type(exc).__name__)
    return "ok" if result is None else result


def read(path):
    with open(path, "rb") as source:
        return source.read().decode(errors="replace")


def do_kill(query):
    """Send SIGKILL to `?pid=` (the supervisor, or another instance's process); "own" when
    the pid is this process's own (the uid tier shares the host's pids)."""
    if int(query["pid"]) == os.getpid():
        return "own"
    return outcome(lambda: os.kill(int(query["pid"]), signal.SIGKILL))


def do_kill_everything(query):
    """kill(-1, SIGKILL), refused where nothing seals this process off: as root, or as the
    user the tests run as (`?test_uid=`), it would reach processes outside the test."""
    if os.getuid() in (0, int(query["test_uid"])):
        return "refused: not sandboxed"
    return outcome(lambda: os.kill(-1, signal.SIGKILL))


def do_read(query):
    """Read a file, e.g. `/proc/<pid>/environ` of the supervisor or of another instance; "own"
    for this process's own /proc entries."""
    if query["path"].startswith(f"/proc/{os.getpid()}/"):
        return "own"
    return outcome(lambda: read(query["path"]))


def do_write_tmp(query):
    """Write a secret into this instance's temporary directory; answer its path."""
    path = os.path.join(os.environ["TMPDIR"], query["name"])
    with open(path, "w") as secret:
        secret.write(TMP_SECRET)
    return path


def do_fill_tmp(query):
    """Write to TMPDIR until it is full (or `?mb=` MB are written); answer how many MB fit."""
    written = 0
    chunk = b"t" * (1 << 20)
    path = os.path.join(os.environ["TMPDIR"], "filler")
    try:
        with open(path, "wb") as filler:
            while written < int(query["mb"]):
                filler.write(chunk)
                filler.flush()
                written += 1
    except OSError as exc:
        return {"mb": written, "error": errno.errorcode.get(exc.errno, str(exc))}
    finally:
        if os.path.exists(path):
            os.remove(path)
    return {"mb": written, "error": None}


def do_write_code_root(query):
    """Try to write a file into the code root (the working directory), by relative path (through
    the directory the process started in) and by absolute path."""
    relative = outcome(lambda: read_back("pwned.txt"))
    if relative == "ok":
        return relative
    return outcome(lambda: read_back(os.path.join(os.getcwd(), "pwned.txt")))


def read_back(path):
    with open(path, "w") as pwned:
        pwned.write("pwned")
    os.remove(path)


def do_fork_bomb(query):
    """Fork children that wait until this call ends, until forking fails (or `?most=`)."""
    hold_read, hold_write = os.pipe()
    forked, error = 0, None
    while forked < int(query["most"]):
        try:
            child = os.fork()
        except OSError as exc:
            error = errno.errorcode.get(exc.errno, str(exc))
            break
        if child == 0:
            os.close(hold_write)
            os.read(hold_read, 1)  # until the parent closes its end
            os._exit(0)
        forked += 1
    os.close(hold_write)  # every child ends now
    os.close(hold_read)
    while True:
        try:
            os.wait()
        except ChildProcessError:
            break
    return {"forked": forked, "error": error}


def do_environment(query):
    return dict(os.environ)


def do_sleep(query):
    time.sleep(float(query.get("seconds", 0)))
    return "slept"


def do_crash(query):
    os._exit(3)


BEHAVIOURS = {
    "kill": do_kill,
    "kill_everything": do_kill_everything,
    "read": do_read,
    "write_tmp": do_write_tmp,
    "fill_tmp": do_fill_tmp,
    "write_code_root": do_write_code_root,
    "fork_bomb": do_fork_bomb,
    "environment": do_environment,
    "sleep": do_sleep,
    "crash": do_crash,
}


def handler(event, context):
    query = event["queryStringParameters"]
    result = BEHAVIOURS[query["do"]](query)
    who = {"uid": os.getuid(), "id": f"{os.getpid()}-{BORN}"}
    return {"statusCode": 200, "body": json.dumps({"result": result, **who})}
