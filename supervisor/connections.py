"""Connection guards uvicorn lacks: a deadline for reading each request.

uvicorn closes idle keep-alive connections, but a client that opens a connection and sends its
headers (or body) a byte at a time holds it for as long as it likes (slowloris). Each request
here must arrive whole within the read timeout of its first byte (of the connection, for the
first request); otherwise the connection is closed. The parsing stays httptools'.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _ReadDeadlineProtocol(HttpToolsProtocol):
    read_timeout_s = 10.0
    _read_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_read_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_read_timer()

    def on_message_complete(self) -> None:
        self._cancel_read_timer()
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_read_timer()
        super().connection_lost(exc)

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


def read_deadline_protocol(read_timeout_s: float) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol, closing connections that send requests too slowly."""
    return type("ReadDeadlineProtocol", (_ReadDeadlineProtocol,),
                {"read_timeout_s": read_timeout_s})
