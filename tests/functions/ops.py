"""A test function for the operational tests (tests/test_e2e_operations*.py).

Every call first appends its `?mark=` query parameter, if any, as a line to the file named by
$OPS_MARKS, if set: the tests read that file to learn which calls reached an instance (they make
it where the function's uid may write, in every sandbox tier: e2e_helpers.shared_file). Then it
does what `?action=` says (default `sleep`).
"""

import json
import os
import time

from instance_id import identity

GIB = 1 << 30


class OpsFailure(Exception):
    """What the `raise` action throws, with a class name the tests can recognise."""


def record_mark(query):
    """Append `?mark=` to $OPS_MARKS (when both are given)."""
    marks_path = os.environ.get("OPS_MARKS")
    if marks_path and "mark" in query:
        with open(marks_path, "a") as marks:
            marks.write(query["mark"] + "\n")


def sleep(query):
    """Sleep `?seconds=` (default 0), then return the instance's identity."""
    time.sleep(float(query.get("seconds", 0)))
    return {"statusCode": 200, "body": json.dumps({"identity": identity()})}


def fail(query):
    """Raise OpsFailure."""
    raise OpsFailure("failed on purpose")


def hog(query):
    """Allocate (and zero) 1 GiB."""
    return {"statusCode": 200, "body": str(len(bytearray(GIB)))}


def exit_1(query):
    """End the instance with os._exit(1)."""
    os._exit(1)


def say(query):
    """Print `?text=` to stdout."""
    print(query["text"], flush=True)
    return {"statusCode": 200, "body": "said"}


ACTIONS = {"sleep": sleep, "raise": fail, "hog": hog, "exit": exit_1, "print": say}


def handler(event, context):
    """Record the call's mark, then run the action named by `?action=`."""
    query = event["queryStringParameters"]
    record_mark(query)
    return ACTIONS[query.get("action", "sleep")](query)
