"""A function whose import takes IMPORT_SECONDS; `?action=` pid, crash or sleep (`?seconds=`)."""

import json
import os
import time

IMPORT_SECONDS = 0.5

time.sleep(IMPORT_SECONDS)


def handler(event, context):
    """Return the pid, crash the instance, or sleep first, as `?action=` says."""
    query = event["queryStringParameters"]
    action = query.get("action", "pid")
    if action == "crash":
        os._exit(1)
    if action == "sleep":
        time.sleep(float(query["seconds"]))
    return {"statusCode": 200, "body": json.dumps({"pid": os.getpid()})}
