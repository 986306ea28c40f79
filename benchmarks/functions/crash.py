"""The `recovery` scenario: `?crash=1` kills the process serving the call; other calls say hello."""

import os


def handler(event, context):
    if (event.get("queryStringParameters") or {}).get("crash"):
        os._exit(1)
    return {"statusCode": 200, "headers": {"Content-Type": "text/plain"}, "body": "Hello, world!"}
