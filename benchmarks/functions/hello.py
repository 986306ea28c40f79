"""The `hello` scenario: a trivial handler, so what is measured is the server's own overhead."""


def handler(event, context):
    return {"statusCode": 200, "headers": {"Content-Type": "text/plain"}, "body": "Hello, world!"}
