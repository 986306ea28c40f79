"""A function whose import takes IMPORT_SECONDS; `?action=` identity (the instance's, see
instance_id.py), crash or sleep (`?seconds=`)."""

import json
import os
import time

from instance_id import identity

IMPORT_SECONDS = 0.5

time.sleep(IMPORT_SECONDS)


def handler(event, context):
    """Return the instance's identity, crash the instance, or sleep first, as `?action=` says."""
    query = event["queryStringParameters"]
    action = query.get("action", "identity")
    if action == "crash":
        os._exit(1)
    if action == "sleep":
        time.sleep(float(query["seconds"]))
    return {"statusCode": 200, "body": json.dumps({"identity": identity()})}
