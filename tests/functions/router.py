"""A test function whose behaviour is chosen per call by the query parameter `action`.

With `?integration=raw` the event is the body as a str: a body `return:<json>` makes the
function return that JSON value, any other body is returned as {"raw_event": body}.
"""

import base64
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import time

from instance_id import identity

NOT_CALLABLE = 42
CHATTER_LINES = 3
call_count = 0


class CustomFailure(Exception):
    """What the `raise` action throws, with a class name the tests can recognise."""


def json_response(payload):
    """A 200 response whose body is `payload` as JSON (objects via their vars)."""
    return {
        "statusCode": 200,
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps(payload, default=vars),
    }


def request_body(event):
    """The request body as text, decoded from base64 when the event says so."""
    if event["isBase64Encoded"]:
        return base64.b64decode(event["body"]).decode()
    return event["body"]


def echo(event, context, query):
    """Return the event, the context and the instance's identity."""
    return json_response({"event": event, "context": context, "identity": identity()})


def respond(event, context, query):
    """Return the JSON value sent as the request body, as the function's result."""
    return json.loads(request_body(event))


def identify(event, context, query):
    """Return the instance's identity (see instance_id.py)."""
    return json_response({"identity": identity()})


def count(event, context, query):
    """Increment a global counter and return it with the instance's identity."""
    global call_count
    call_count += 1
    return json_response({"count": call_count, "identity": identity()})


def sleep(event, context, query):
    """Sleep `?seconds=`, then return the instance's identity."""
    time.sleep(float(query["seconds"]))
    return json_response({"identity": identity()})


def fail(event, context, query):
    """Raise CustomFailure with `?message=`."""
    raise CustomFailure(query["message"])


def environment(event, context, query):
    """Return the environment variables named in `?names=` (comma-separated) and the cwd."""
    values = {name: os.environ.get(name) for name in query["names"].split(",")}
    return json_response({"env": values, "cwd": os.getcwd()})


def modules(event, context, query):
    """Return the names of loaded modules that look like the runtime's own."""
    names = [name for name in sys.modules
             if name.split(".")[0] in ("worker", "supervisor") or "mypyc" in name]
    return json_response({"runtime_modules": names})


def remaining(event, context, query):
    """Return context.get_remaining_time_in_millis()."""
    return json_response({"remaining_ms": context.get_remaining_time_in_millis()})


def chatter(event, context, query):
    """Write lines tagged `?tag=` to stdout, stderr and through logging.warning."""
    tag = query["tag"]
    for line_number in range(CHATTER_LINES):
        print(f"{tag} stdout {line_number}")
        print(f"{tag} stderr {line_number}", file=sys.stderr)
        time.sleep(0.01)
    logging.warning("%s logging", tag)
    return json_response({"identity": identity()})


def log_levels(event, context, query):
    """Probe the preconfigured root logger; lines are tagged `?tag=`."""
    root = logging.getLogger()
    initial_level = root.level
    handlers_before = list(root.handlers)
    formatter_before = root.handlers[0].formatter if root.handlers else None
    logging.basicConfig(level=logging.DEBUG, format="%(message)s")
    basic_config_changed_nothing = (
        root.handlers == handlers_before
        and root.level == initial_level
        and (root.handlers[0].formatter if root.handlers else None) is formatter_before
    )
    logging.info("%s info before setLevel", query["tag"])
    logging.warning("%s warning", query["tag"])
    root.setLevel(logging.INFO)
    try:
        logging.info("%s info after setLevel", query["tag"])
    finally:
        root.setLevel(initial_level)
    return json_response({
        "handler_count": len(handlers_before),
        "initial_level": initial_level,
        "basic_config_changed_nothing": basic_config_changed_nothing,
    })


def spawn_detached(event, context, query):
    """Start a `sleep 60` in a session of its own (escaping the process group), its argv[0] the
    `?tag=`, so that the test can find it on the host's process list; return at once."""
    subprocess.Popen([query["tag"], "60"], executable="sleep", start_new_session=True)
    return json_response({"started": query["tag"]})


def unserializable(event, context, query):
    """Return a set, which has no JSON form."""
    return {1, 2, 3}


def exit_3(event, context, query):
    """End the instance with sys.exit(3)."""
    sys.exit(3)


def os_exit_1(event, context, query):
    """End the instance with os._exit(1)."""
    os._exit(1)


def sigkill(event, context, query):
    """SIGKILL the instance's own process."""
    os.kill(os.getpid(), signal.SIGKILL)


def segfault(event, context, query):
    """Read address 0: a segmentation fault."""
    ctypes.string_at(0)


ACTIONS = {
    "echo": echo,
    "respond": respond,
    "identity": identify,
    "count": count,
    "sleep": sleep,
    "raise": fail,
    "env": environment,
    "remaining": remaining,
    "modules": modules,
    "chatter": chatter,
    "log_levels": log_levels,
    "spawn_detached": spawn_detached,
    "unserializable": unserializable,
    "exit_3": exit_3,
    "os_exit_1": os_exit_1,
    "sigkill": sigkill,
    "segfault": segfault,
}


def raw(event):
    """The raw-integration behaviour (see the module docstring)."""
    if event.startswith("return:"):
        return json.loads(event.removeprefix("return:"))
    return {"raw_event": event}


def handler(event, context):
    """Run the action named by `?action=` (default `echo`); a str event means raw integration."""
    if isinstance(event, str):
        return raw(event)
    query = event["queryStringParameters"]
    return ACTIONS[query.get("action", "echo")](event, context, query)
