"""The bundled example: answers with a greeting, echoing the `name` query parameter."""

import json


def handler(event, context):
    name = event["queryStringParameters"].get("name", "world")
    return {
        "statusCode": 200,
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps({"message": f"Hello, {name}!", "request_id": context.request_id}),
    }
