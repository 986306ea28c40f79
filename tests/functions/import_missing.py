"""A function whose import fails with ModuleNotFoundError."""

import no_such_module_e2e  # noqa: F401


def handler(event, context):
    """Never reached: the import above fails."""
    return {"statusCode": 200, "body": "unreachable"}
