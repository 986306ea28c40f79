"""uvicorn's peer: an ASGI app calling the handler in-process, on the event loop itself.

No isolation and no thread hop: a sync handler blocks the one process while it runs, which is
the fastest a single Python process can answer (the ceiling, not a fair fight for `sleep`).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from benchmarks.peers import adapter

HANDLER = adapter.load_handler()
IS_ASYNC = adapter.is_async(HANDLER)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The ASGI entry point."""
    if scope["type"] != "http":
        return
    body = await _read_body(receive)
    headers = {name.decode("latin-1"): value.decode("latin-1")
               for name, value in scope["headers"]}
    query = dict(parse_qsl(scope["query_string"].decode("latin-1")))
    event = adapter.build_event(scope["method"], headers, query, body)
    result = HANDLER(event, adapter.CONTEXT)
    if IS_ASYNC:
        result = await result
    status, response_headers, payload = adapter.to_response(result)
    raw_headers = [(name.encode(), value.encode()) for name, value in response_headers]
    raw_headers.append((b"content-length", str(len(payload)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload})


async def _read_body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)
