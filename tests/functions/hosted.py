"""A test function for tests/test_e2e_hosting.py: who served the call, after `?seconds=`."""

import json
import os
import sys
import time

from instance_id import identity

VERSION = os.environ.get("HOSTED_VERSION", "one")


def handler(event, context):
    if isinstance(event, str):  # ?integration=raw
        return f"raw:{context.function_name}:{event}"
    query = event["queryStringParameters"] or {}
    time.sleep(float(query.get("seconds", 0)))
    return {"statusCode": 200, "body": json.dumps({
        "function": context.function_name, "identity": identity(), "prefix": sys.prefix,
        "version": VERSION, "memory": context.memory_limit_in_mb})}
