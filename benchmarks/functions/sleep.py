"""The `sleep` scenario: 50 ms of waiting per call (N one-call instances: N/0.05 req/s at best)."""

import time

SLEEP_S = 0.05


def handler(event, context):
    time.sleep(SLEEP_S)
    return {"statusCode": 200, "headers": {"Content-Type": "text/plain"}, "body": "slept"}
