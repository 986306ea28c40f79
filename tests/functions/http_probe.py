"""A test function for the HTTP tests (tests/test_e2e_http.py).

By default it answers with what it saw of the request, as JSON: its headers, body (decoded
from base64 when it came so) and query parameters. `?size=N` answers N bytes of "x" instead,
`?seconds=S` sleeps first.
"""

import base64
import json
import time


def handler(event, context):
    query = event["queryStringParameters"]
    time.sleep(float(query.get("seconds", 0)))
    if "size" in query:
        return {"statusCode": 200, "headers": {"Content-Type": "text/plain"},
                "body": "x" * int(query["size"])}
    body = event["body"]
    if event["isBase64Encoded"]:
        body = base64.b64decode(body).decode("utf-8", "replace")
    seen = {"headers": event["headers"], "body": body, "query": query}
    return {"statusCode": 200, "headers": {"Content-Type": "application/json"},
            "body": json.dumps(seen)}
