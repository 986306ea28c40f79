"""The second function of the hosting example: answers with what it was sent."""

import base64


def handler(event, context):
    body = event["body"] or ""
    if event["isBase64Encoded"]:
        body = base64.b64decode(body).decode("utf-8", "replace")
    return {"statusCode": 200, "body": f"{context.function_name} got: {body}"}
