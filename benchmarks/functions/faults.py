"""The `faults` scenario: `hello`, except that 1 % of calls crash the process serving them."""

import os
import random

CRASH_RATE = 0.01


def handler(event, context):
    if random.random() < CRASH_RATE:
        os._exit(1)
    return {"statusCode": 200, "headers": {"Content-Type": "text/plain"}, "body": "Hello, world!"}
