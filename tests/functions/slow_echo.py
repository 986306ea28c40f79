"""A test function for tests/test_e2e_nginx.py: a slow call that says which supervisor ran it.

Every call first appends a line `<$SERVED_BY> <?call=>` to the file named by $CALL_MARKS, if
set: the test reads it to learn which calls started on which supervisor, and whether any call
ran twice. Then it sleeps `?seconds=` (default 0.2) and returns
{"served_by": $SERVED_BY, "call": ?call=, "identity": the instance's identity}.
"""

import json
import os
import time

from instance_id import identity

DEFAULT_SECONDS = 0.2


def record_start(served_by, call):
    """Append `served_by call` to $CALL_MARKS (one short write, so lines never interleave)."""
    marks_path = os.environ.get("CALL_MARKS")
    if marks_path and call:
        with open(marks_path, "a") as marks:
            marks.write(f"{served_by} {call}\n")


def handler(event, context):
    """Record the call's start, sleep, and name the supervisor that served it."""
    query = event["queryStringParameters"]
    served_by = os.environ.get("SERVED_BY", "")
    call = query.get("call", "")
    record_start(served_by, call)
    time.sleep(float(query.get("seconds", DEFAULT_SECONDS)))
    body = {"served_by": served_by, "call": call, "identity": identity()}
    return {"statusCode": 200, "body": json.dumps(body)}
