"""A standalone server on supervisor.http11, for the overload test and for wrk.

    python tests/http11_stub.py PORT [hello|overload]

`hello` answers every request 200 "Hello, world!"; `overload` answers 429 at once, except
/probe (200), the way a supervisor with a full queue answers everything but its own paths. It
prints "ready" once it listens, and serves until killed.

For a comparison under the same load, `asgi_hello` is the same hello as a raw ASGI app:
`uvicorn --app-dir tests http11_stub:asgi_hello --http httptools --loop uvloop --no-access-log`.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from typing import Any

import uvloop

from supervisor.http11 import HttpLimits, HttpServer, Request

HELLO = (200, [(b"content-type", b"text/plain")], b"Hello, world!")
BUSY = (429, [(b"content-type", b"application/json")],
        b'{"errorMessage": "too many calls in progress", "errorType": "TooManyRequests"}')
PROBED = (200, [(b"content-type", b"text/plain")], b"ok\n")


class HelloApp:
    """Answers every request at once."""

    def handle(self, request: Request) -> None:
        request.respond(*HELLO)


class OverloadApp:
    """Answers 429 at once, except /probe."""

    def handle(self, request: Request) -> None:
        request.respond(*(PROBED if request.path == b"/probe" else BUSY))


async def serve(port: int, app: HelloApp | OverloadApp) -> None:
    listener = socket.create_server(("127.0.0.1", port), backlog=2048)
    server = HttpServer(app, HttpLimits(), asyncio.get_running_loop())
    await server.start(listener)
    print("ready", flush=True)
    await asyncio.Event().wait()


async def asgi_hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The hello app as raw ASGI (for uvicorn)."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"13")]})
    await send({"type": "http.response.body", "body": b"Hello, world!"})


def main() -> None:
    port = int(sys.argv[1])
    app = OverloadApp() if sys.argv[2:] == ["overload"] else HelloApp()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(port, app))


if __name__ == "__main__":
    main()
