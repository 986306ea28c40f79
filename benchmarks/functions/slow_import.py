"""The `coldstart` scenario: importing this module costs about 300 ms of CPU, as a heavy
dependency tree would; it then writes `slow_import ready <epoch seconds>` to stderr so the
benchmark can tell when every process serving it has finished importing."""

import sys
import time

from burn import burn_cpu

IMPORT_CPU_S = 0.3

burn_cpu(IMPORT_CPU_S)
print(f"slow_import ready {time.time():.6f}", file=sys.stderr, flush=True)


def handler(event, context):
    return {"statusCode": 200, "headers": {"Content-Type": "text/plain"}, "body": "Hello, world!"}
