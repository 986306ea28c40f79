"""functions-framework's `--asgi` peer: a target for its Starlette app under uvicorn workers.

Reading a Starlette body needs `await`, so the target is a coroutine; it then treats the handler
as functions-framework treats targets: an async one is awaited on the loop, a sync one runs in
the loop's thread pool (`run_in_executor`), as the framework does for every `def` target.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response

from benchmarks.peers import adapter

HANDLER = adapter.load_handler()
IS_ASYNC = adapter.is_async(HANDLER)


async def handle(request: Request) -> Response:
    """The functions-framework target."""
    event = adapter.build_event(request.method, dict(request.headers),
                                dict(request.query_params), await request.body())
    if IS_ASYNC:
        result = await HANDLER(event, adapter.CONTEXT)
    else:
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(None, HANDLER, event, adapter.CONTEXT)
    status, headers, payload = adapter.to_response(result)
    return Response(payload, status_code=status, headers=dict(headers))
