"""HTTP/1.1 for the supervisor: connections on httptools, with no ASGI in between.

The supervisor's CPU per call is the ceiling of the whole server, and uvicorn's ASGI path (a
scope dict, a task and message dicts per request) was half of it. Here one asyncio.Protocol per
connection feeds llhttp (through httptools) and hands each request, once it has arrived whole,
to App.handle; the app answers through Request.respond, at once or later. Per request that is a
few parser callbacks, one object and one write: no task, no future, no timer.

The layer owns what a server owes HTTP itself, so that the app need not:

- Parsing is llhttp's. A malformed request gets 400, a head (request line, headers, trailers)
  over max_head_bytes 431, a body over max_body_bytes 413, each decided while the request
  arrives, sent in its turn with `Connection: close`, counted in `stats` and never logged: a
  log line per bad request would be an amplifier for whoever sends them.
- Keep-alive and pipelining: answers go out in order, one request at a time is with the app, and
  while it is, at most one read's worth of later requests is buffered (reading pauses). An app
  may hold a connection after an answer (Request.respond's hold_s): its next request is read
  no sooner, which makes a client that retries a refusal at once wait in the kernel.
- Write flow control: no further request goes to the app while the client is not taking what
  was written.
- Deadlines: a request must arrive whole within read_timeout_s of its first byte, an idle
  connection lives keepalive_timeout_s, written data must be taken within write_timeout_s. One
  sweep per server checks them all, a few times a second: a timer armed and cancelled per
  request costs more than the rest of the request's bookkeeping.

Data flow of one connection:

    data_received --> llhttp --> on_headers_complete: limits, 100 Continue, App.head_received
                             --> on_message_complete: the request joins the connection's queue
    queue --(one at a time)--> App.handle --> Request.respond --> one transport.write
        --> the next queued request; or, with none: resume reading, keep-alive deadline
    eof_received --> request.on_disconnect(): the client may be gone, or may have half-closed
        and still read; the app answers either way, then the connection closes
    connection_lost --> request.on_disconnect() if not called yet and the request is unanswered;
        the queue is dropped
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from typing import Protocol

import httptools

Headers = list[tuple[bytes, bytes]]
Answer = tuple[int, Headers, bytes]

LISTEN_BACKLOG = 2048  # as uvicorn's: a burst of connections must not meet SYN drops
# The deadline sweep runs this often, or at a quarter of the shortest timeout if that is
# shorter: deadlines fire up to one interval late.
SWEEP_INTERVAL_S = 0.5
# After an answer that leaves part of the request unread (a refusal), what the client still
# sends is read and dropped for this long before the socket closes: closing with unread input
# makes the kernel send a reset, which can destroy the answer before the client reads it.
LINGER_S = 2.0
# A body this large goes out as a second buffer of one gathered write instead of being copied
# behind the head.
GATHER_BODY_BYTES = 16 * 1024

logger = logging.getLogger(__name__)

_STATUS_LINES = {status.value: b"HTTP/1.1 %d %s\r\n" % (status.value, status.phrase.encode())
                 for status in http.HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_JSON = (b"content-type", b"application/json")
_BODILESS_STATUSES = frozenset((204, 304))  # no body, and no Content-Length (RFC 9110 §8.6)
_FRAMING_HEADERS = frozenset((b"content-length", b"transfer-encoding", b"expect", b"upgrade"))
_INF = float("inf")
# What a connection's deadline guards, and so what its expiry counts as.
_READ, _KEEPALIVE, _WRITE, _LINGER = "read", "keepalive", "write", "linger"


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """Sizes and timeouts that bound what one client can make the server hold or wait for."""

    max_head_bytes: int = 64 * 1024  # request line + header lines (+ trailers) of one request
    max_body_bytes: int = 3_670_016  # 3.5 MB
    read_timeout_s: float = 10.0  # a request must arrive whole within this of its first byte
    keepalive_timeout_s: float = 5.0  # an idle keep-alive connection is closed after this
    write_timeout_s: float = 30.0  # a client must take what is written within this


@dataclass(slots=True)
class HttpStats:
    """What the layer did on its own, as counters for the app's metrics."""

    connections: int = 0  # accepted
    requests: int = 0  # handed to the app
    bad_requests: int = 0  # 400: malformed, smuggling attempts, CONNECT, upgrades with a body
    head_too_large: int = 0  # 431
    body_too_large: int = 0  # 413
    read_timeouts: int = 0
    keepalive_timeouts: int = 0
    write_timeouts: int = 0
    disconnects: int = 0  # clients gone before their answer was written
    app_errors: int = 0  # App.handle raised: answered 500


class Request:
    """One request that has arrived whole (in App.head_received: its head, with no body yet)."""

    __slots__ = ("_connection", "_keep_alive", "body", "client", "headers", "http_version",
                 "method", "on_disconnect", "path", "query", "target")

    def __init__(self, method: str, target: bytes, headers: Headers,
                 client: tuple[str, int] | None, http_version: str, keep_alive: bool) -> None:
        self.method = method
        self.target = target  # as sent: b"/a/b?x=1", or absolute-form b"http://h/a/b?x=1"
        self.path, self.query = _split_target(target)
        self.headers = headers  # in arrival order, names lower-cased, values as sent
        self.body = b""
        self.client = client
        self.http_version = http_version
        # Set by the app; called once if, before the response is written, the connection is
        # lost or the client stops sending (it may only have half-closed: respond anyway).
        self.on_disconnect: Callable[[], None] | None = None
        self._keep_alive = keep_alive
        self._connection: _Connection | None = None  # while it is with App.handle

    def respond(self, status: int, headers: Headers, body: bytes,
                header_lines: bytes = b"", hold_s: float = 0.0) -> None:
        """Answer the request, now or later, once; a no-op when the client has left.

        The layer adds Content-Length, Date and, when it will close, `Connection: close`; the
        headers must not repeat those. `header_lines` are more headers, already rendered
        (`Name: value` CRLF each) and checked by the caller. A HEAD request gets the headers
        only. With `hold_s`, the connection's next request is taken no sooner than that (a
        client told to back off, that retries at once, waits there instead of in the app).
        """
        connection = self._connection
        if connection is not None:
            self._connection = None
            connection.write_response(self, status, headers, body, header_lines, hold_s)


class App(Protocol):
    """What serves the requests.

    An app may also define `head_received(request) -> Answer | None`, called once the head of a
    request with a body has arrived and before the body is read (request.body is still empty).
    An answer returned there is sent in the request's turn with `Connection: close`, the body is
    never read, and handle() is not called for that request: a cheap refusal for a request whose
    body is not wanted (a full queue, say).
    """

    def handle(self, request: Request) -> None:
        """Serve a request that has arrived whole; it must lead to request.respond(), also
        after on_disconnect (a half-closed connection stays open until the answer)."""


class HttpServer:
    """Serves HTTP/1.1 on a listening socket, handing each request to the app."""

    def __init__(self, app: App, limits: HttpLimits, loop: asyncio.AbstractEventLoop) -> None:
        self.app = app
        self.head_received: Callable[[Request], Answer | None] | None = getattr(
            app, "head_received", None)
        self.limits = limits
        self.loop = loop
        self.stats = HttpStats()
        self.stopping = False
        self._connections: set[_Connection] = set()
        self._listener: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._sweep_interval_s = min(SWEEP_INTERVAL_S, limits.read_timeout_s / 4,
                                     limits.keepalive_timeout_s / 4, limits.write_timeout_s / 4)
        self._all_closed: asyncio.Future[None] | None = None
        self._date_line = b""
        self._date_expires_at = 0.0

    @property
    def connection_count(self) -> int:
        """Connections open now."""
        return len(self._connections)

    async def start(self, sock: socket.socket) -> None:
        """Serve on an already bound and listening socket."""
        self._listener = await self.loop.create_server(
            lambda: _Connection(self), sock=sock, backlog=LISTEN_BACKLOG)

    def stop_accepting(self) -> None:
        """Close the listener; idle connections close at once, busy ones after their answer."""
        self.stopping = True
        if self._listener is not None:
            self._listener.close()
        for connection in list(self._connections):
            connection.shut_down()

    async def wait_closed(self, timeout_s: float) -> None:
        """Wait until every connection has closed; at timeout_s, abort those left."""
        if not self._connections:
            return
        self._all_closed = self.loop.create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._all_closed), timeout_s)
        except TimeoutError:
            for connection in list(self._connections):
                connection.abort()
            # An aborted transport reports connection_lost on the next loop iteration.
            await asyncio.wait({self._all_closed}, timeout=SWEEP_INTERVAL_S)

    def date_line(self) -> bytes:
        """The `date` header line, rendered once per second."""
        if self.loop.time() >= self._date_expires_at:
            wall = time.time()
            self._date_line = b"date: %s\r\n" % formatdate(wall, usegmt=True).encode()
            self._date_expires_at = self.loop.time() + 1.0 - wall % 1.0
        return self._date_line

    def track(self, connection: _Connection) -> None:
        """A connection was made: keep it under the deadline sweep."""
        self._connections.add(connection)
        self.stats.connections += 1
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self._sweep_interval_s, self._sweep)
        if self.stopping:
            connection.shut_down()

    def forget(self, connection: _Connection) -> None:
        """A connection is gone."""
        self._connections.discard(connection)
        if self._connections:
            return
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._all_closed is not None and not self._all_closed.done():
            self._all_closed.set_result(None)

    def _sweep(self) -> None:
        now = self.loop.time()
        for connection in [c for c in self._connections
                           if c.deadline <= now or c.write_deadline <= now]:
            connection.time_out(now)
        self._sweeper = (self.loop.call_later(self._sweep_interval_s, self._sweep)
                         if self._connections else None)


class _StopParsing(Exception):
    """Raised from a parser callback: nothing more of this connection's input is parsed."""


class _Connection(asyncio.Protocol):
    """One client connection: its parser, its queue of whole requests, its deadlines."""

    __slots__ = (
        "_body", "_body_bytes", "_chunked", "_client", "_content_length", "_continue_due",
        "_current", "_done_reading", "_expects_continue", "_head_bytes", "_headers", "_held",
        "_limits", "_loop", "_parser", "_peer_eof", "_progressed", "_queue", "_read_paused",
        "_receiving",
        "_request", "_server", "_serving", "_stalled_bytes", "_target", "_transport",
        "_upgrade", "_write_paused", "deadline", "deadline_kind", "write_deadline",
    )

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._limits = server.limits
        self._loop = server.loop
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport = None  # type: ignore[assignment]  # set at once
        self._client: tuple[str, int] | None = None
        # Whole requests (or a rendered refusal, as bytes) waiting for their turn.
        self._queue: deque[Request | bytes] = deque()
        self._current: Request | None = None  # the request with the app
        self._serving = self._held = False
        self._done_reading = False  # input is no longer parsed: a refusal, or a last request
        self._peer_eof = False
        self._read_paused = False
        self._write_paused = False
        self.deadline = self.write_deadline = _INF
        self.deadline_kind = _READ
        self.on_message_begin()  # sets up the state of the request being parsed
        self._receiving = False
        # Bytes of reads that completed nothing: parts of a head or of trailers too long to
        # reach a callback (httptools holds a header until it ends).
        self._stalled_bytes = 0
        self._progressed = False
        self._continue_due = False

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self._client = (peer[0], peer[1]) if isinstance(peer, tuple) else None
        # A connection that never sends a byte is held to the read deadline too.
        self.deadline = self._loop.time() + self._limits.read_timeout_s
        self._server.track(self)

    def data_received(self, data: bytes) -> None:
        if self._done_reading:
            return  # after a last request or a refusal, input is dropped unread
        if self.deadline_kind is _KEEPALIVE:  # the first bytes of a new request
            self.deadline_kind = _READ
            self.deadline = self._loop.time() + self._limits.read_timeout_s
        self._progressed = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as error:
            if not self._done_reading:  # llhttp's own verdict, not one of ours
                self._server.stats.bad_requests += 1
                self._answer_now(*_error(400, "BadRequest", f"malformed HTTP request: {error}"))
        if not self._progressed and not self._done_reading:
            self._stalled_bytes += len(data)
            if self._stalled_bytes > self._limits.max_head_bytes:
                self._refuse_head()
        if self._queue and self._current is None:
            self._advance()
        # Beyond the request with the app, keep no more than this one read's worth.
        if (self._queue or (self._receiving and self._current is not None)) \
                and not self._read_paused:
            self._read_paused = True
            self._transport.pause_reading()

    def eof_received(self) -> bool:
        self._peer_eof = True
        self._done_reading = True
        if self._current is None and not self._queue:
            return False
        # The client has stopped sending. It may have half-closed and still read the answers
        # to what arrived whole, or it may be gone: the two look alike until something is
        # written. The app hears of it, and answers either way.
        request = self._current
        if request is not None:
            _call_on_disconnect(request)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._done_reading = True
        self._parser = None  # type: ignore[assignment]  # it refers back to us: no cycle
        self._queue.clear()
        self.deadline = self.write_deadline = _INF
        self._server.forget(self)
        request, self._current = self._current, None
        if request is not None and request._connection is not None:
            request._connection = None
            self._server.stats.disconnects += 1
            _call_on_disconnect(request)

    def pause_writing(self) -> None:
        self._write_paused = True
        self.write_deadline = self._loop.time() + self._limits.write_timeout_s

    def resume_writing(self) -> None:
        self._write_paused = False
        self.write_deadline = _INF
        if self._current is None:
            self._advance()

    # -- parser callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._receiving = True
        self._request: Request | None = None  # once its head is complete
        self._target = b""
        self._headers: Headers = []
        self._body: list[bytes] = []
        self._body_bytes = self._head_bytes = self._content_length = 0
        self._chunked = self._expects_continue = self._upgrade = False

    def on_url(self, url: bytes) -> None:
        self._target += url
        self._head_bytes += len(url)
        if self._head_bytes > self._limits.max_head_bytes:
            self._refuse_head()
            raise _StopParsing

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4  # ": " and CRLF
        if self._head_bytes > self._limits.max_head_bytes:
            self._refuse_head()
            raise _StopParsing
        if self._request is not None:
            return  # a trailer: it counts toward the head, but never joins the headers
        name = name.lower()
        if name in _FRAMING_HEADERS:
            self._note_framing(name, value)
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._progressed = True
        self._stalled_bytes = 0
        parser = self._parser
        method = parser.get_method().decode()
        version = parser.get_http_version()
        keep_alive = parser.should_keep_alive() and not self._upgrade
        request = self._request = Request(method, self._target, self._headers, self._client,
                                          version, keep_alive)
        has_body = self._chunked or self._content_length > 0
        answer = None
        if has_body or version != "1.1" or method == "CONNECT":  # what might be refused
            answer = self._refusal(request, has_body)
            if answer is None and has_body and self._server.head_received is not None:
                answer = self._early_answer(request)
        if answer is not None:
            self._answer_now(*answer, head_only=method == "HEAD")
            raise _StopParsing
        if self._expects_continue and has_body and version == "1.1":
            if self._current is None and not self._queue and not self._write_paused:
                self._transport.write(_CONTINUE)
            else:
                self._continue_due = True  # in this request's turn: see _await_request

    def on_body(self, body: bytes) -> None:
        self._progressed = True
        self._body_bytes += len(body)
        if self._body_bytes > self._limits.max_body_bytes:  # chunked: no length up front
            self._server.stats.body_too_large += 1
            self._answer_now(*_body_too_large(self._limits))
            raise _StopParsing
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._progressed = True
        self._stalled_bytes = 0
        self._receiving = self._continue_due = False
        request = self._request
        assert request is not None  # on_headers_complete made it
        body = self._body
        if body:
            request.body = body[0] if len(body) == 1 else b"".join(body)
        self._queue.append(request)
        if not request._keep_alive:
            # What follows a last request is never parsed: no request the client does not
            # expect an answer to, and no bytes of another protocol after an Upgrade.
            self._done_reading = True
            raise _StopParsing

    # -- answering ------------------------------------------------------------------------------

    def write_response(self, request: Request, status: int, headers: Headers,
                       body: bytes, header_lines: bytes = b"", hold_s: float = 0.0) -> None:
        """Write the current request's response (see Request.respond)."""
        transport = self._transport
        if transport.is_closing():
            return
        server = self._server
        keep_alive = request._keep_alive and not server.stopping \
            and not (self._peer_eof and not self._queue)
        length: int | None = len(body)
        if status in _BODILESS_STATUSES:
            length, body = None, b""
        elif request.method == "HEAD":
            body = b""
        if len(body) < GATHER_BODY_BYTES:
            transport.write(_head(status, headers, length, server.date_line(), keep_alive, body,
                                  header_lines))
        else:
            transport.writelines((_head(status, headers, length, server.date_line(),
                                        keep_alive, b"", header_lines), body))
        self._current = None
        if not keep_alive:
            self._close()
        elif hold_s > 0:
            self._hold(hold_s)
        elif not self._serving:
            self._advance()

    def shut_down(self) -> None:
        """The server is stopping: close now when idle; otherwise the next answer closes."""
        if self._current is None and not self._queue and not self._receiving:
            self._close()

    def abort(self) -> None:
        """Drop the connection at once, whatever is pending."""
        self.deadline = _INF
        self._transport.abort()

    def time_out(self, now: float) -> None:
        """The deadline or the write deadline has passed."""
        stats = self._server.stats
        kind = _WRITE if self.write_deadline <= now else self.deadline_kind
        if kind is _WRITE:  # the client does not take what was written
            stats.write_timeouts += 1
            self.abort()
        elif kind is _LINGER:
            self.abort()
        else:
            if kind is _READ:
                stats.read_timeouts += 1
            else:
                stats.keepalive_timeouts += 1
            self._close()

    def _hold(self, seconds: float) -> None:
        """Take no further request for `seconds` (see Request.respond); nothing is read meanwhile,
        and the deadlines wait too."""
        self._held = True
        self.deadline = _INF
        if not self._read_paused:
            self._read_paused = True
            self._transport.pause_reading()
        self._loop.call_later(seconds, self._release)

    def _release(self) -> None:
        self._held = False
        if self._current is None and not self._transport.is_closing():
            self._advance()

    def _advance(self) -> None:
        """Hand queued requests to the app in order while nothing holds the connection up."""
        if self._serving or self._held:
            return  # a response written from inside App.handle: the loop below goes on
        self._serving = True
        try:
            while (self._current is None and self._queue and not self._write_paused
                   and not self._held and not self._transport.is_closing()):
                item = self._queue.popleft()
                if isinstance(item, bytes):
                    self._transport.write(item)
                    self._queue.clear()
                    self._linger()
                    return
                self._dispatch(item)
        finally:
            self._serving = False
        if self._current is None and not self._write_paused and not self._held \
                and not self._transport.is_closing():
            self._await_request()

    def _dispatch(self, request: Request) -> None:
        self._current = request
        request._connection = self
        self.deadline = _INF  # how long the app takes is the app's business
        self._server.stats.requests += 1
        try:
            self._server.app.handle(request)
        except Exception:
            logger.exception("the app failed to handle %s %r", request.method, request.target)
            self._server.stats.app_errors += 1
            request.respond(*_error(500, "InternalError", "the request could not be handled"))

    def _await_request(self) -> None:
        """Nothing is with the app or queued: read on, or close."""
        if self._peer_eof or (self._server.stopping and not self._receiving):
            self._close()
            return
        if self._read_paused:
            self._read_paused = False
            self._transport.resume_reading()
        if self._receiving:
            self.deadline_kind = _READ
            self.deadline = self._loop.time() + self._limits.read_timeout_s
            if self._continue_due:
                self._continue_due = False
                self._transport.write(_CONTINUE)
        else:
            self.deadline_kind = _KEEPALIVE
            self.deadline = self._loop.time() + self._limits.keepalive_timeout_s

    def _refusal(self, request: Request, has_body: bool) -> Answer | None:
        """The layer's own answer to a head it will not serve, if it has one."""
        stats = self._server.stats
        version = request.http_version
        if version != "1.1" and version != "1.0":  # llhttp takes 0.9 (no version) and 2.0
            stats.bad_requests += 1
            return _error(505, "HTTPVersionNotSupported", f"HTTP/{version} is not supported")
        if request.method == "CONNECT":
            stats.bad_requests += 1
            return _error(400, "BadRequest", "CONNECT is not supported")
        if has_body and self._parser.should_upgrade():
            # llhttp would hand the body to the new protocol, so the app would see none.
            stats.bad_requests += 1
            return _error(400, "BadRequest", "an Upgrade request with a body is not supported")
        if self._content_length > self._limits.max_body_bytes:
            stats.body_too_large += 1
            return _body_too_large(self._limits)
        return None

    def _early_answer(self, request: Request) -> Answer | None:
        """The app's answer from the head alone, if it has one (see App)."""
        try:
            return self._server.head_received(request)  # type: ignore[misc]
        except Exception:
            logger.exception("the app failed on the head of %s %r", request.method, request.target)
            self._server.stats.app_errors += 1
            return _error(500, "InternalError", "the request could not be handled")

    def _note_framing(self, name: bytes, value: bytes) -> None:
        if name == b"content-length":
            self._content_length = int(value)  # llhttp has checked it is all digits, and one
        elif name == b"transfer-encoding":
            self._chunked = True  # llhttp refuses any request encoding but a final chunked
        elif name == b"expect":
            self._expects_continue = value.lower() == b"100-continue"
        else:
            self._upgrade = True  # served as plain HTTP/1.1, and the connection closes after

    def _refuse_head(self) -> None:
        self._server.stats.head_too_large += 1
        limit = self._limits.max_head_bytes
        self._answer_now(*_error(
            431, "RequestHeaderFieldsTooLarge",
            f"the request line and headers are larger than the {limit}-byte limit"))

    def _answer_now(self, status: int, headers: Headers, body: bytes,
                    head_only: bool = False) -> None:
        """Answer the request being read, in its turn, and parse nothing more."""
        self._done_reading = True
        self._receiving = self._continue_due = False
        self._queue.append(_head(status, headers, len(body), self._server.date_line(),
                                 keep_alive=False, body=b"" if head_only else body))

    def _linger(self) -> None:
        """Close after an answer that left input unread (see LINGER_S)."""
        if self._peer_eof:
            self._close()
            return
        self._transport.write_eof()
        if self._read_paused:
            self._read_paused = False
            self._transport.resume_reading()
        self.deadline_kind = _LINGER
        self.deadline = self._loop.time() + LINGER_S

    def _close(self) -> None:
        self._done_reading = True
        self._transport.close()
        # The transport closes once what is buffered is written: that is a write, with its
        # deadline.
        self.deadline_kind = _WRITE
        self.deadline = self._loop.time() + self._limits.write_timeout_s


def _head(status: int, headers: Headers, content_length: int | None, date_line: bytes,
          keep_alive: bool, body: bytes, header_lines: bytes = b"") -> bytes:
    """A response's status line and header section, and then `body`."""
    lines = [_STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status, header_lines]
    for name, value in headers:
        lines += (name, b": ", value, b"\r\n")
    if content_length is not None:
        lines.append(b"content-length: %d\r\n" % content_length)
    lines.append(date_line)
    lines.append(b"\r\n" if keep_alive else b"connection: close\r\n\r\n")
    lines.append(body)
    return b"".join(lines)


def _error(status: int, error_type: str, message: str) -> Answer:
    body = json.dumps({"errorMessage": message, "errorType": error_type}).encode()
    return status, [_JSON], body


def _body_too_large(limits: HttpLimits) -> Answer:
    limit_mb = limits.max_body_bytes / (1 << 20)
    return _error(413, "RequestTooLarge", f"request body is larger than the {limit_mb:g} MB limit")


def _call_on_disconnect(request: Request) -> None:
    hook, request.on_disconnect = request.on_disconnect, None  # once
    if hook is not None:
        hook()


def _split_target(target: bytes) -> tuple[bytes, bytes]:
    """The path and the query (without "?") of a request target."""
    if target.startswith(b"/"):
        path, _, query = target.partition(b"?")
        return path, query
    if target == b"*":
        return target, b""
    url = httptools.parse_url(target)  # absolute-form: http://host/path?query
    return url.path or b"/", url.query or b""
