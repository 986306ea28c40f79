"""What the HTTP connections need beyond uvicorn: a read deadline and a disconnect hook.

uvicorn closes idle keep-alive connections, but a client that opens a connection and sends its
headers (or body) a byte at a time holds it for as long as it likes (slowloris). Each request
here must arrive whole within the read timeout of its first byte (of the connection, for the
first request); otherwise the connection is closed. The parsing stays httptools'.

The app learns that a client went away while its call waits in the queue through
`scope[CONNECTION]`, the connection itself: it sets `on_disconnect` while the call waits. An
ASGI app could instead keep a task in `receive()` for every queued call, which under load costs
more than the rest of the queueing together.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

CONNECTION = "sfsupervisor.connection"


class _GuardedProtocol(HttpToolsProtocol):
    read_timeout_s = 10.0
    _read_timer: asyncio.TimerHandle | None = None
    # Called once if the connection is lost; the app sets it while a call waits.
    on_disconnect: Callable[[], None] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
        self._arm_read_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope[CONNECTION] = self  # type: ignore[literal-required]
        self._arm_read_timer()

    def on_message_complete(self) -> None:
        self._cancel_read_timer()
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_read_timer()
        super().connection_lost(exc)
        hook, self.on_disconnect = self.on_disconnect, None
        if hook is not None:
            hook()

    def _arm_read_timer(self) -> None:
        self._cancel_read_timer()
        self._read_timer = self.loop.call_later(self.read_timeout_s, self._read_timed_out)

    def _cancel_read_timer(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if not self.transport.is_closing():
            self.logger.info("closing a connection whose request did not arrive within %g s",
                             self.read_timeout_s)
            self.transport.close()


class _CoalescingTransport:
    """The connection's transport, with the writes of one loop iteration sent as one.

    uvicorn writes a response's head and its body separately: two system calls, and two
    wake-ups of the client, where one does.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def _flush(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, []
            if not self._transport.is_closing():
                self._transport.writelines(pending)  # one gathered write, no copy of the body

    def __getattr__(self, name: str) -> object:
        return getattr(self._transport, name)


def guarded_protocol(read_timeout_s: float) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with a read deadline and a disconnect hook."""
    return type("GuardedProtocol", (_GuardedProtocol,), {"read_timeout_s": read_timeout_s})
