"""The `async` scenario: an async handler awaiting 20 ms (a stand-in for a network call)."""

import asyncio

WAIT_S = 0.02


async def handler(event, context):
    await asyncio.sleep(WAIT_S)
    return {"statusCode": 200, "headers": {"Content-Type": "text/plain"}, "body": "waited"}
