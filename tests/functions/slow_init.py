"""A function whose import takes IMPORT_SECONDS; a call sleeps `?seconds=`, returns its pid."""

import json
import os
import time

IMPORT_SECONDS = 0.8

time.sleep(IMPORT_SECONDS)


def handler(event, context):
    """Sleep for the `seconds` query parameter, then return the instance's pid."""
    time.sleep(float(event["queryStringParameters"].get("seconds", "0")))
    return {"statusCode": 200, "body": json.dumps({"pid": os.getpid()})}
