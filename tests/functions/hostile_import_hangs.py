"""An entry module whose import hangs far past any test's timeout."""

import time

IMPORT_SLEEP_S = 60


def handler(event, context):
    """Never reached in time: the import sleeps first."""
    return {"statusCode": 200, "body": "imported after all"}


time.sleep(IMPORT_SLEEP_S)
