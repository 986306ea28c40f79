"""A function whose import takes IMPORT_SECONDS; a call sleeps `?seconds=`, then returns the
identity of its instance (see instance_id.py)."""

import json
import time

from instance_id import identity

IMPORT_SECONDS = 0.8

time.sleep(IMPORT_SECONDS)


def handler(event, context):
    """Sleep for the `seconds` query parameter, then return the instance's identity."""
    time.sleep(float(event["queryStringParameters"].get("seconds", "0")))
    return {"statusCode": 200, "body": json.dumps({"identity": identity()})}
