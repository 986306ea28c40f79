"""The `payload` scenario: a 1 MB JSON request body in, the same megabyte back out."""


def handler(event, context):
    return {"statusCode": 200, "headers": {"Content-Type": "application/json"},
            "body": event["body"]}
