"""The `cpu` scenario: about 5 ms of the calling thread's CPU time per call."""

import hashlib
import time

CPU_S = 0.005
_BLOCK = bytes(4096)


def handler(event, context):
    # Thread CPU time, not wall time: a call preempted by another process still burns 5 ms.
    deadline = time.thread_time() + CPU_S
    rounds = 0
    while time.thread_time() < deadline:
        hashlib.sha256(_BLOCK).digest()
        rounds += 1
    return {"statusCode": 200, "headers": {"Content-Type": "text/plain"}, "body": str(rounds)}
