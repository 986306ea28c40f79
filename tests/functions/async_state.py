"""An async function keeping a lock, a queue and a background task on its loop across calls."""

import asyncio
import json

from instance_id import identity

STATE = {}


async def echo_service(requests):
    """Background task started by the first call: answers each (text, future) request."""
    while True:
        text, reply = await requests.get()
        reply.set_result(f"echo:{text}")


def start_state(loop):
    """Create the loop-bound state on the first call."""
    STATE.update(loop=loop, lock=asyncio.Lock(), requests=asyncio.Queue(), calls=0)
    STATE["service"] = loop.create_task(echo_service(STATE["requests"]))


async def handler(event, context):
    """Use the state created by the first call; `?fail=1` raises after using it."""
    loop = asyncio.get_running_loop()
    if not STATE:
        start_state(loop)
    async with STATE["lock"]:
        STATE["calls"] += 1
        reply = loop.create_future()
        await STATE["requests"].put((context.request_id, reply))
        echoed = await asyncio.wait_for(reply, 2)
    if event["queryStringParameters"].get("fail"):
        raise RuntimeError("async failure")
    payload = {
        "identity": identity(),
        "loop_id": id(loop),
        "same_loop": loop is STATE["loop"],
        "calls": STATE["calls"],
        "echoed": echoed,
    }
    return {"statusCode": 200, "body": json.dumps(payload)}
