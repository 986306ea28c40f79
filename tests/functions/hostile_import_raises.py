"""An entry module whose import raises: every call must get the import's error."""


class HostileImportError(Exception):
    """Raised while this module is imported."""


def handler(event, context):
    """Never reached: the import fails first."""
    return {"statusCode": 200, "body": "imported after all"}


raise HostileImportError("the hostile module refuses to import")
