"""A function whose import fails with ZeroDivisionError."""

RATIO = 1 / 0


def handler(event, context):
    """Never reached: the module fails while it is imported."""
    return {"statusCode": 200, "body": str(RATIO)}
