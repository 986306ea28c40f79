"""supervisor.http11 over real sockets: raw bytes in, raw bytes out.

Each test starts an HttpServer on its own uvloop loop in a thread (the overload test runs
tests/http11_stub.py in a subprocess, with wrk as the load) and speaks to it with plain
sockets; responses are read back with httptools' response parser.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httptools
import psutil
import pytest
import uvloop

from supervisor import http11
from supervisor.http11 import Answer, HttpLimits, HttpServer, Request

pytestmark = pytest.mark.timeout(30)

T = TypeVar("T")
DEADLINE_S = 5.0
# Short deadlines, so that timeout tests take a fraction of a second.
FAST = HttpLimits(max_head_bytes=8192, max_body_bytes=100_000, read_timeout_s=0.5,
                  keepalive_timeout_s=0.5, write_timeout_s=0.5)
# Deadlines no test reaches unless it means to.
PATIENT = HttpLimits(max_head_bytes=8192, max_body_bytes=100_000, read_timeout_s=20.0,
                     keepalive_timeout_s=20.0, write_timeout_s=20.0)
STUB = Path(__file__).with_name("http11_stub.py")


def wait_until(check: Callable[[], T], what: str, timeout_s: float = DEADLINE_S) -> T:
    """Poll `check` until it returns something true; fail after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


# -- the server side -----------------------------------------------------------------------------


def echo(request: Request) -> Answer:
    """A JSON picture of the request, as the app saw it."""
    seen = {
        "method": request.method, "target": request.target.decode("latin-1"),
        "path": request.path.decode("latin-1"), "query": request.query.decode("latin-1"),
        "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in request.headers],
        "body": request.body.decode("latin-1"), "http_version": request.http_version,
        "client": list(request.client or ()),
    }
    return 200, [(b"content-type", b"application/json")], json.dumps(seen).encode()


@dataclass
class RecordingApp:
    """Answers each request with `answer` (the echo by default), or holds it when `hold`."""

    hold: bool = False
    answer: Callable[[Request], Answer] = echo
    early: Callable[[Request], Answer | None] | None = None
    requests: list[Request] = field(default_factory=list)
    disconnected: list[bytes] = field(default_factory=list)

    def handle(self, request: Request) -> None:
        self.requests.append(request)
        request.on_disconnect = lambda: self.disconnected.append(request.target)
        if not self.hold:
            request.respond(*self.answer(request))

    def head_received(self, request: Request) -> Answer | None:
        return self.early(request) if self.early is not None else None

    def targets(self) -> list[bytes]:
        return [request.target for request in self.requests]


class Stub:
    """An HttpServer with `app` on a uvloop loop of its own, in a thread."""

    def __init__(self, app: Any, limits: HttpLimits) -> None:
        self.app = app
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=2048)
        self.port = self.listener.getsockname()[1]
        self.server = self.call(lambda: HttpServer(app, limits, self.loop))
        asyncio.run_coroutine_threadsafe(self.server.start(self.listener), self.loop).result(5)

    def call(self, function: Callable[[], T]) -> T:
        """Run `function` on the server's loop and return its result."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(function())
            except BaseException as exc:
                future.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return future.result(DEADLINE_S)

    def respond(self, request: Request, answer: Answer | None = None) -> None:
        """Answer a held request (with the echo by default), from the server's loop."""
        self.call(lambda: request.respond(*(answer or echo(request))))

    def stop(self) -> None:
        self.call(self.server.stop_accepting)
        asyncio.run_coroutine_threadsafe(self.server.wait_closed(1.0), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    @property
    def stats(self) -> Any:
        return self.server.stats


@pytest.fixture
def serve() -> Iterator[Callable[..., Stub]]:
    """Start stub servers that stop at the end of the test."""
    stubs: list[Stub] = []

    def start(app: Any = None, limits: HttpLimits = PATIENT) -> Stub:
        stubs.append(Stub(app if app is not None else RecordingApp(), limits))
        return stubs[-1]

    yield start
    for stub in stubs:
        stub.stop()


# -- the client side -----------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: dict[bytes, bytes]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """A raw connection, with responses read by httptools' response parser."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S)
        self._parser = httptools.HttpResponseParser(self)
        self._done: list[Response] = []
        self._headers: dict[bytes, bytes] = {}
        self._body: list[bytes] = []

    def send(self, data: bytes) -> Client:
        self.sock.sendall(data)
        return self

    def response(self) -> Response:
        """The next response (interim ones included)."""
        while not self._done:
            data = self.sock.recv(1 << 20)
            assert data, "the server closed the connection before a response"
            self._parser.feed_data(data)
        return self._done.pop(0)

    def closed(self) -> bool:
        """True when the server closes (EOF or reset) with nothing more sent; waits for it."""
        try:
            return self.sock.recv(1 << 16) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._done.append(Response(self._parser.get_status_code(), self._headers,
                                   b"".join(self._body)))
        self._headers, self._body = {}, []


def get(target: bytes = b"/", extra: bytes = b"") -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\nHost: test\r\n" + extra + b"\r\n"


def assert_refused(response: Response, status: int, error_type: str) -> None:
    assert response.status == status
    assert response.headers[b"connection"] == b"close"
    assert response.headers[b"content-type"] == b"application/json"
    assert response.json()["errorType"] == error_type


# -- 1. parser errors ----------------------------------------------------------------------------


MALFORMED = {
    "garbage": b"\x00\xff\xfe\x01garbage\x7f\r\n\r\n",
    "bad version": b"GET / FOO/1.1\r\n\r\n",
    "header without colon": b"GET / HTTP/1.1\r\nHost x\r\n\r\n",
    "space before colon": b"GET / HTTP/1.1\r\nX-Sp : v\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nX-A: a\r\n b\r\n\r\n",
    "NUL in a value": b"GET / HTTP/1.1\r\nX-A: a\x00b\r\n\r\n",
    "unknown method": b"FOO / HTTP/1.1\r\n\r\n",
    "non-ASCII header name": b"GET / HTTP/1.1\r\nX-\xc3\xa9: v\r\n\r\n",
    "Content-Length -1": b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    "Content-Length 0x10": b"POST / HTTP/1.1\r\nContent-Length: 0x10\r\n\r\n",
}


@pytest.mark.parametrize("request_bytes", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_request_gets_400_json_then_close_and_no_log_line(
    serve: Callable[..., Stub], request_bytes: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    stub = serve()
    client = Client(stub.port).send(request_bytes)
    response = client.response()
    assert_refused(response, 400, "BadRequest")
    assert response.json()["errorMessage"].startswith("malformed HTTP request: ")
    assert client.closed()
    assert stub.stats.bad_requests == 1
    assert stub.app.requests == []
    assert caplog.records == []
    assert Client(stub.port).send(get()).response().status == 200  # still serving


def test_bad_request_pipelined_behind_a_good_one_is_answered_in_its_turn(
    serve: Callable[..., Stub]
) -> None:
    stub = serve(RecordingApp(hold=True))
    client = Client(stub.port).send(get(b"/first") + b"GET / FOO/1.1\r\n\r\n")
    request = wait_until(lambda: stub.app.requests, "the first request")[0]
    stub.respond(request)
    assert client.response().status == 200
    assert_refused(client.response(), 400, "BadRequest")
    assert client.closed()


@pytest.mark.parametrize("version", [b"", b" HTTP/0.9", b" HTTP/2.0"])
def test_versions_other_than_1_0_and_1_1_get_505(serve: Callable[..., Stub],
                                                 version: bytes) -> None:
    stub = serve()
    client = Client(stub.port).send(b"GET /" + version + b"\r\nHost: x\r\n\r\n")
    assert_refused(client.response(), 505, "HTTPVersionNotSupported")
    assert client.closed()
    assert stub.app.requests == []


# -- 2. keep-alive -------------------------------------------------------------------------------


def test_http11_keeps_the_connection_alive(serve: Callable[..., Stub]) -> None:
    stub = serve()
    client = Client(stub.port)
    for n in range(3):
        response = client.send(get(b"/%d" % n)).response()
        assert response.status == 200
        assert b"connection" not in response.headers
    assert stub.stats.connections == 1


@pytest.mark.parametrize(("version", "connection", "kept"), [
    (b"1.0", b"", False), (b"1.0", b"Connection: keep-alive\r\n", True),
    (b"1.1", b"Connection: close\r\n", False), (b"1.1", b"Connection: keep-alive\r\n", True),
])
def test_connection_header_and_version_decide_keep_alive(
    serve: Callable[..., Stub], version: bytes, connection: bytes, kept: bool
) -> None:
    stub = serve()
    client = Client(stub.port).send(b"GET / HTTP/" + version + b"\r\n" + connection + b"\r\n")
    response = client.response()
    assert response.status == 200
    assert response.json()["http_version"] == version.decode()
    if kept:
        assert b"connection" not in response.headers
        assert client.send(get()).response().status == 200
    else:
        assert response.headers[b"connection"] == b"close"
        assert client.closed()


def test_idle_keep_alive_connection_closes_at_the_keepalive_timeout(
    serve: Callable[..., Stub]
) -> None:
    stub = serve(limits=FAST)
    client = Client(stub.port)
    assert client.send(get()).response().status == 200
    answered_at = time.monotonic()
    assert client.closed()
    idle_s = time.monotonic() - answered_at
    assert FAST.keepalive_timeout_s - 0.05 <= idle_s < FAST.keepalive_timeout_s + 0.5
    assert stub.stats.keepalive_timeouts == 1
    wait_until(lambda: stub.server.connection_count == 0, "the connection to go")


# -- 3. pipelining -------------------------------------------------------------------------------


def test_pipelined_requests_are_answered_in_order(serve: Callable[..., Stub]) -> None:
    stub = serve()
    client = Client(stub.port).send(b"".join(get(b"/%d" % n) for n in range(5)))
    assert [client.response().json()["target"] for _ in range(5)] == [f"/{n}" for n in range(5)]


def test_one_request_at_a_time_with_the_app_and_reading_paused_meanwhile(
    serve: Callable[..., Stub]
) -> None:
    stub = serve(RecordingApp(hold=True))
    client = Client(stub.port)
    request = get(b"/p", b"X-Pad: " + b"p" * 4000 + b"\r\n")
    client.sock.setblocking(False)
    sent = 0
    try:
        while sent < 64 << 20:  # far beyond what kernel buffers and one read can hold
            sent += client.sock.send(request * 64)
    except BlockingIOError:
        pass
    assert sent < 64 << 20, "the server kept reading while a request was with the app"
    wait_until(lambda: stub.app.requests, "the first request")
    assert len(stub.app.requests) == 1
    client.sock.setblocking(True)
    client.sock.settimeout(DEADLINE_S)
    count = sent // len(request)
    stub.app.hold = False
    stub.respond(stub.app.requests[0])
    for _ in range(count):
        assert client.response().status == 200
    assert len(stub.app.requests) == count


# -- 4. request bodies ---------------------------------------------------------------------------


def test_content_length_body_reaches_the_app(serve: Callable[..., Stub]) -> None:
    stub = serve()
    body = b"x" * 50_000
    client = Client(stub.port).send(
        b"POST /u HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body + get(b"/next"))
    assert client.response().json()["body"] == body.decode()
    assert client.response().json()["target"] == "/next"


def test_content_length_over_the_limit_is_refused_at_once_and_closes(
    serve: Callable[..., Stub]
) -> None:
    stub = serve()
    client = Client(stub.port).send(b"POST / HTTP/1.1\r\nContent-Length: 100001\r\n\r\n")
    assert_refused(client.response(), 413, "RequestTooLarge")  # without sending a body byte
    client.send(get(b"/after"))  # must not be taken as body, nor as a request
    assert client.closed()
    assert stub.app.requests == []
    assert stub.stats.body_too_large == 1


def test_client_sending_a_refused_body_anyway_still_reads_the_413(
    serve: Callable[..., Stub]
) -> None:
    stub = serve()
    body = b"x" * (4 << 20)  # sent whole, as clients without Expect: 100-continue do
    client = Client(stub.port).send(b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body))
    client.send(body)  # read and dropped by the server (no reset to destroy the 413)
    assert_refused(client.response(), 413, "RequestTooLarge")
    assert client.closed()


def test_chunked_body_is_assembled_and_over_the_limit_refused(
    serve: Callable[..., Stub]
) -> None:
    stub = serve()
    chunks = b"".join(b"%x\r\n" % n + b"c" * n + b"\r\n" for n in range(1, 200))
    client = Client(stub.port).send(
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n")
    assert client.response().json()["body"] == "".join("c" * n for n in range(1, 200))
    client.send(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(20):  # 20 chunks of 8 KB: the limit (100 KB) is passed at the 13th chunk
        try:
            client.send(b"2000\r\n" + b"d" * 0x2000 + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            break
    assert_refused(client.response(), 413, "RequestTooLarge")
    assert client.closed()
    assert len(stub.app.requests) == 1


# -- 5. Expect: 100-continue ---------------------------------------------------------------------


def test_expect_100_continue_within_the_limit_gets_100_then_the_answer(
    serve: Callable[..., Stub]
) -> None:
    stub = serve()
    client = Client(stub.port).send(
        b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
    assert client.response().status == 100
    assert client.send(b"hello").response().json()["body"] == "hello"


def test_expect_100_continue_over_the_limit_gets_413_without_100(
    serve: Callable[..., Stub]
) -> None:
    stub = serve()
    client = Client(stub.port).send(
        b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 10485760\r\n\r\n")
    assert_refused(client.response(), 413, "RequestTooLarge")
    assert client.closed()


def test_100_continue_waits_for_the_requests_turn(serve: Callable[..., Stub]) -> None:
    stub = serve(RecordingApp(hold=True))
    client = Client(stub.port).send(
        get(b"/first") + b"POST /second HTTP/1.1\r\nExpect: 100-continue\r\n"
        b"Content-Length: 2\r\n\r\n")
    first = wait_until(lambda: stub.app.requests, "the first request")[0]
    stub.respond(first)
    assert client.response().json()["target"] == "/first"
    assert client.response().status == 100  # only now, after the first answer
    client.send(b"ok")
    second = wait_until(lambda: stub.app.requests[1:], "the second request")[0]
    stub.respond(second)
    assert client.response().json()["body"] == "ok"


# -- 6. HEAD -------------------------------------------------------------------------------------


def test_head_gets_the_content_length_but_no_body_and_framing_holds(
    serve: Callable[..., Stub]
) -> None:
    stub = serve()
    client = Client(stub.port).send(b"HEAD /h HTTP/1.1\r\n\r\n" + get(b"/g"))
    data = b""
    while data.count(b"HTTP/1.1 200 OK") < 2 or not data.endswith(b"}"):
        data += client.sock.recv(65536)
    head_response, get_response = data.split(b"HTTP/1.1 200 OK")[1:]
    head_length = int(head_response.split(b"content-length: ")[1].split(b"\r\n")[0])
    assert head_length == len(echo_of(stub, 0))
    assert head_response.endswith(b"\r\n\r\n")  # and nothing after the header section
    assert json.loads(get_response.split(b"\r\n\r\n", 1)[1])["target"] == "/g"


def echo_of(stub: Stub, index: int) -> bytes:
    return stub.call(lambda: echo(stub.app.requests[index]))[2]


# -- 7. head size --------------------------------------------------------------------------------


def test_a_head_just_within_the_limit_is_served(serve: Callable[..., Stub]) -> None:
    stub = serve()
    client = Client(stub.port).send(get(b"/", b"X-Big: " + b"a" * 7900 + b"\r\n"))
    assert client.response().status == 200


@pytest.mark.parametrize("headers", [
    b"X-Big: " + b"a" * 9000 + b"\r\n",
    b"".join(b"X-H%d: v\r\n" % n for n in range(1000)),
    b"X-Chopped: " + b"a" * 100,  # not even a whole line
], ids=["one big header", "many small headers", "an unfinished line"])
def test_a_head_over_the_limit_gets_431(serve: Callable[..., Stub], headers: bytes) -> None:
    stub = serve()
    client = Client(stub.port)
    if headers.endswith(b"\r\n"):
        client.send(get(b"/", headers))
    else:
        client.send(b"GET / HTTP/1.1\r\n" + headers)
        for _ in range(100):  # 100 more bytes per write, each write a read of its own
            client.send(b"a" * 100)
            time.sleep(0.001)
    assert_refused(client.response(), 431, "RequestHeaderFieldsTooLarge")
    assert client.closed()
    assert stub.stats.head_too_large == 1
    assert stub.app.requests == []


def test_a_64_mb_header_costs_neither_memory_nor_a_stall(serve: Callable[..., Stub]) -> None:
    stub = serve(limits=HttpLimits())  # the real 64 KB limit
    process = psutil.Process()
    rss_before = process.memory_info().rss
    attacker = Client(stub.port)
    attacker.send(b"GET / HTTP/1.1\r\nX-Big: ")

    def flood() -> None:
        block = b"a" * (1 << 20)
        try:
            for _ in range(64):
                attacker.sock.sendall(block)
        except OSError:
            pass  # the server is done listening

    sender = threading.Thread(target=flood)
    sender.start()
    probe = Client(stub.port)
    latencies = []
    while sender.is_alive() and len(latencies) < 200:
        started = time.perf_counter()
        assert probe.send(get(b"/probe")).response().status == 200
        latencies.append(time.perf_counter() - started)
    response = attacker.response()
    assert_refused(response, 431, "RequestHeaderFieldsTooLarge")
    sender.join(DEADLINE_S)
    rss_growth_mb = (process.memory_info().rss - rss_before) / (1 << 20)
    print(f"RSS growth {rss_growth_mb:.1f} MB, slowest probe {max(latencies) * 1000:.1f} ms")
    assert rss_growth_mb < 16
    assert max(latencies) < 0.5


# -- 8. trailers ---------------------------------------------------------------------------------


def test_trailers_never_join_the_headers(serve: Callable[..., Stub]) -> None:
    stub = serve()
    client = Client(stub.port).send(
        b"POST / HTTP/1.1\r\nX-User: alice\r\nContent-Type: text/plain\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n7\r\n{\"a\":1}\r\n0\r\nX-User: admin\r\n"
        b"Content-Type: application/json\r\nHost: evil.example\r\n\r\n" + get(b"/next"))
    seen = client.response().json()
    assert seen["headers"] == [["x-user", "alice"], ["content-type", "text/plain"],
                               ["transfer-encoding", "chunked"]]
    assert seen["body"] == '{"a":1}'
    assert client.response().json()["headers"] == [["host", "test"]]  # none left over either


def test_trailers_count_toward_the_head_limit(serve: Callable[..., Stub]) -> None:
    stub = serve()
    client = Client(stub.port).send(
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n"
        + b"".join(b"X-T%d: %s\r\n" % (n, b"t" * 100) for n in range(100)) + b"\r\n")
    assert_refused(client.response(), 431, "RequestHeaderFieldsTooLarge")
    assert stub.app.requests == []


# -- 9. half-close -------------------------------------------------------------------------------


def test_half_closed_client_gets_its_answers_then_the_connection_closes(
    serve: Callable[..., Stub]
) -> None:
    stub = serve()
    client = Client(stub.port).send(get(b"/1") + get(b"/2"))
    client.sock.shutdown(socket.SHUT_WR)
    assert [client.response().json()["target"] for _ in range(2)] == ["/1", "/2"]
    assert client.closed()


def test_half_closed_client_hears_from_an_app_that_answers_after_the_eof(
    serve: Callable[..., Stub]
) -> None:
    stub = serve(RecordingApp(hold=True))
    client = Client(stub.port).send(get(b"/later"))
    request = wait_until(lambda: stub.app.requests, "the request")[0]
    client.sock.shutdown(socket.SHUT_WR)
    wait_until(lambda: stub.app.disconnected, "on_disconnect at the EOF")
    stub.respond(request)
    response = client.response()
    assert (response.status, response.headers[b"connection"]) == (200, b"close")
    assert client.closed()
    assert stub.app.disconnected == [b"/later"]
    assert stub.stats.disconnects == 0  # it was answered


# -- 10. slowloris -------------------------------------------------------------------------------


def test_request_not_whole_within_the_read_timeout_is_closed(serve: Callable[..., Stub]) -> None:
    stub = serve(limits=FAST)
    client = Client(stub.port).send(b"GET / HTTP/1.1\r\n")
    started = time.monotonic()
    with pytest.raises((BrokenPipeError, ConnectionResetError)):
        for byte in b"X-Slow: " + b"s" * 100:
            client.send(bytes([byte]))
            time.sleep(0.05)  # a byte per 50 ms: the pace under test
    assert time.monotonic() - started < FAST.read_timeout_s + 1.0
    assert stub.stats.read_timeouts == 1
    assert stub.app.requests == []


def test_a_slow_body_is_closed_at_the_read_timeout_too(serve: Callable[..., Stub]) -> None:
    stub = serve(limits=FAST)
    client = Client(stub.port).send(b"POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\n")
    started = time.monotonic()
    assert client.closed()
    assert FAST.read_timeout_s - 0.05 <= time.monotonic() - started < FAST.read_timeout_s + 0.5
    assert stub.stats.read_timeouts == 1


def test_a_connection_that_sends_nothing_is_closed_at_the_read_timeout(
    serve: Callable[..., Stub]
) -> None:
    stub = serve(limits=FAST)
    clients = [Client(stub.port) for _ in range(20)]
    started = time.monotonic()
    assert all(client.closed() for client in clients)
    assert time.monotonic() - started < FAST.read_timeout_s + 0.5
    assert stub.stats.read_timeouts == 20


def test_read_timeout_counts_from_the_first_byte_of_each_request(
    serve: Callable[..., Stub]
) -> None:
    stub = serve(limits=FAST)
    client = Client(stub.port)
    for _ in range(3):  # 3 pauses of 0.3 s on one connection: longer than the read timeout
        assert client.send(get()).response().status == 200
        time.sleep(0.3)  # idle, within the keep-alive timeout: the pace under test
    assert stub.stats.read_timeouts == 0


# -- 11. slow readers ----------------------------------------------------------------------------


def big_answer(request: Request) -> Answer:
    size = 16 << 20 if request.path == b"/big" else 2
    return 200, [(b"content-type", b"text/plain")], b"b" * size


def test_no_request_goes_to_the_app_while_the_client_is_not_reading(
    serve: Callable[..., Stub]
) -> None:
    stub = serve(RecordingApp(answer=big_answer), limits=FAST)
    client = Client(stub.port)
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.send(get(b"/big") + get(b"/second"))
    wait_until(lambda: stub.stats.write_timeouts == 1, "the slow reader to be dropped")
    assert stub.app.targets() == [b"/big"]
    wait_until(lambda: stub.server.connection_count == 0, "the connection to go")


def test_a_client_that_reads_slowly_but_within_the_deadline_gets_everything(
    serve: Callable[..., Stub]
) -> None:
    stub = serve(RecordingApp(answer=big_answer), limits=HttpLimits(write_timeout_s=5.0))
    client = Client(stub.port).send(get(b"/big") + get(b"/second"))
    wait_until(lambda: stub.app.requests, "the first request")
    assert stub.app.targets() == [b"/big"]  # the transport is over its high-water mark
    assert len(client.response().body) == 16 << 20
    assert client.response().body == b"bb"


# -- 12. smuggling -------------------------------------------------------------------------------


SMUGGLING = {
    "CL.TE": b"POST / HTTP/1.1\r\nContent-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n"
             b"0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n",
    "TE.CL": b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n"
             b"5c\r\nGET /smuggled HTTP/1.1\r\n\r\n0\r\n\r\n",
    "two equal Content-Length": b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3"
                                b"\r\n\r\nabcGET /smuggled HTTP/1.1\r\n\r\n",
    "two different Content-Length": b"POST / HTTP/1.1\r\nContent-Length: 3\r\n"
                                    b"Content-Length: 30\r\n\r\nabcGET /smuggled HTTP/1.1\r\n\r\n",
    "chunked, identity": b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n"
                         b"0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n",
    "identity alone": b"POST / HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n",
    "two Transfer-Encoding": b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "xchunked + CL": b"POST / HTTP/1.1\r\nTransfer-Encoding: xchunked\r\nContent-Length: 3"
                     b"\r\n\r\nabc",
    "space before colon": b"POST / HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "chunk size zz": b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "chunk size -1": b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n",
    "chunk size overflow": b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"ffffffffffffffffffff\r\n",
    "chunk size 0x3": b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n",
    "Content-Length +5": b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\nhello",
}


@pytest.mark.parametrize("request_bytes", SMUGGLING.values(), ids=SMUGGLING.keys())
def test_smuggling_attempts_get_400_and_close(serve: Callable[..., Stub],
                                              request_bytes: bytes) -> None:
    stub = serve()
    client = Client(stub.port).send(request_bytes)
    assert_refused(client.response(), 400, "BadRequest")
    assert client.closed()
    assert stub.app.requests == []


def test_transfer_encoding_ending_in_chunked_is_decoded(serve: Callable[..., Stub]) -> None:
    stub = serve()
    client = Client(stub.port).send(
        b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    assert client.response().json()["body"] == "abc"  # the app decodes gzip, if it likes


# -- 13. upgrades, HTTP/2, CONNECT ---------------------------------------------------------------


@pytest.mark.parametrize("upgrade", [
    b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: x\r\n",
    b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAA\r\n",
    b"Upgrade: h2c\r\n",
], ids=["websocket", "h2c", "Upgrade without Connection: upgrade"])
def test_upgrade_is_served_as_http11_then_closed(serve: Callable[..., Stub],
                                                 upgrade: bytes) -> None:
    stub = serve()
    client = Client(stub.port).send(get(b"/u", upgrade) + b"\x00\x00\x12\x04GET /x HTTP/1.1\r\n")
    response = client.response()
    assert response.status == 200
    assert response.headers[b"connection"] == b"close"
    assert client.closed()
    assert stub.app.targets() == [b"/u"]


def test_upgrade_with_a_body_is_refused(serve: Callable[..., Stub]) -> None:
    stub = serve()
    client = Client(stub.port).send(
        b"POST / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Content-Length: 5\r\n\r\nhello")
    assert_refused(client.response(), 400, "BadRequest")
    assert stub.app.requests == []


@pytest.mark.parametrize("request_bytes", [
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n",
], ids=["HTTP/2 preface", "CONNECT"])
def test_http2_preface_and_connect_get_400(serve: Callable[..., Stub], request_bytes: bytes,
                                           caplog: pytest.LogCaptureFixture) -> None:
    stub = serve()
    client = Client(stub.port).send(request_bytes)
    assert_refused(client.response(), 400, "BadRequest")
    assert client.closed()
    assert stub.app.requests == []
    assert caplog.records == []


# -- 14. the response ----------------------------------------------------------------------------


def test_response_bytes(serve: Callable[..., Stub]) -> None:
    answers = iter([(200, [(b"content-type", b"text/plain"), (b"x-a", b"1")], b"Hello"),
                    (599, [], b""), (204, [(b"x-b", b"2")], b"")])
    stub = serve(RecordingApp(answer=lambda request: next(answers)))
    client = Client(stub.port).send(get() + get() + get(b"/", b"Connection: close\r\n"))
    data = b""
    while chunk := client.sock.recv(65536):
        data += chunk
    date = time.strftime("%a, %d %b %Y", time.gmtime()).encode()
    first, second, third = data.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"200 OK\r\ncontent-type: text/plain\r\nx-a: 1\r\n"
                            b"content-length: 5\r\ndate: " + date)
    assert first.endswith(b" GMT\r\n\r\nHello")
    assert second.startswith(b"599 \r\ncontent-length: 0\r\ndate: ")
    assert third.startswith(b"204 No Content\r\nx-b: 2\r\ndate: ")  # no Content-Length
    assert third.endswith(b" GMT\r\nconnection: close\r\n\r\n")
    assert b"server:" not in data.lower()


def test_rendered_header_lines_go_out_right_after_the_status_line(
    serve: Callable[..., Stub]
) -> None:
    class LinesApp:
        def handle(self, request: Request) -> None:
            request.respond(200, [(b"x-b", b"2")], b"Hi", b"X-A: 1\r\nX-A: 2\r\n")

    stub = serve(LinesApp())
    data = Client(stub.port).send(get(b"/", b"Connection: close\r\n")).sock.recv(65536)
    assert data.startswith(b"HTTP/1.1 200 OK\r\nX-A: 1\r\nX-A: 2\r\nx-b: 2\r\n"
                           b"content-length: 2\r\n")
    assert data.endswith(b"\r\n\r\nHi")


def test_a_held_connection_takes_its_next_request_only_after_the_hold(
    serve: Callable[..., Stub]
) -> None:
    hold_s = 0.3

    class HoldingApp:
        def __init__(self) -> None:
            self.taken: list[float] = []

        def handle(self, request: Request) -> None:
            self.taken.append(time.monotonic())
            request.respond(429, [], b"later", hold_s=hold_s)

    app = HoldingApp()
    stub = serve(app)
    client = Client(stub.port).send(get() + get())
    first, second = client.response(), client.response()
    assert (first.status, second.status) == (429, 429)
    assert app.taken[1] - app.taken[0] >= hold_s * 0.9
    other = Client(stub.port).send(get())  # another connection is not held
    assert other.response().status == 429
    assert app.taken[2] - app.taken[1] < hold_s


class CountingTransport:
    """A transport that counts the writes made to it."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.transport.write(data)

    def writelines(self, data: Any) -> None:
        self.writes += 1
        self.transport.writelines(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


def test_each_response_is_one_write(serve: Callable[..., Stub],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    transports: list[CountingTransport] = []
    connection_made = http11._Connection.connection_made

    def count_writes(connection: Any, transport: asyncio.Transport) -> None:
        transports.append(CountingTransport(transport))
        connection_made(connection, transports[-1])

    monkeypatch.setattr(http11._Connection, "connection_made", count_writes)
    stub = serve(RecordingApp(answer=lambda request: (200, [], b"s" * int(request.path[1:]))))
    client = Client(stub.port).send(get(b"/10") + get(b"/100000") + get(b"/20"))
    assert [len(client.response().body) for _ in range(3)] == [10, 100_000, 20]
    assert transports[0].writes == 3


def test_an_app_that_raises_gets_a_500(serve: Callable[..., Stub],
                                       caplog: pytest.LogCaptureFixture) -> None:
    def broken(request: Request) -> Answer:
        raise RuntimeError("bug")

    stub = serve(RecordingApp(answer=broken))
    client = Client(stub.port).send(get())
    response = client.response()
    assert response.status == 500
    assert response.json()["errorType"] == "InternalError"
    assert stub.stats.app_errors == 1
    assert "RuntimeError: bug" in caplog.text
    assert client.send(get()).response().status == 500  # the connection goes on


def test_head_received_answers_before_the_body_and_closes(serve: Callable[..., Stub]) -> None:
    def refuse_posts(request: Request) -> Answer | None:
        assert request.body == b""
        return (429, [(b"content-type", b"text/plain")], b"busy") \
            if request.method == "POST" else None

    stub = serve(RecordingApp(early=refuse_posts))
    client = Client(stub.port).send(get(b"/first") + b"POST / HTTP/1.1\r\n"
                                    b"Expect: 100-continue\r\nContent-Length: 50000\r\n\r\n")
    assert client.response().json()["target"] == "/first"
    response = client.response()  # not a 100: the body is not wanted
    assert (response.status, response.body) == (429, b"busy")
    assert response.headers[b"connection"] == b"close"
    assert client.closed()
    assert stub.app.targets() == [b"/first"]


# -- 15. overload --------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk")
def test_a_probe_is_answered_promptly_while_500_connections_hammer() -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    environment = {**os.environ, "PYTHONPATH": str(STUB.parent.parent)}
    server = subprocess.Popen([sys.executable, str(STUB), str(port), "overload"],
                              stdout=subprocess.PIPE, env=environment)
    wrk = None
    try:
        assert server.stdout is not None
        assert server.stdout.readline() == b"ready\n"
        wrk = subprocess.Popen(["wrk", "-t1", "-c500", "-d4s", f"http://127.0.0.1:{port}/"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        probe = Client(port)
        wait_until(lambda: psutil.Process(server.pid).num_fds() > 400, "wrk's connections")
        latencies = []
        for _ in range(300):
            started = time.perf_counter()
            assert probe.send(get(b"/probe")).response().status == 200
            latencies.append(time.perf_counter() - started)
        latencies.sort()
        p99_ms = latencies[int(len(latencies) * 0.99)] * 1000
        assert wrk.poll() is None, "the load ended before the probes did"
        print(f"probe latency under load: p50 {latencies[len(latencies) // 2] * 1000:.2f} ms, "
              f"p99 {p99_ms:.2f} ms, max {latencies[-1] * 1000:.2f} ms")
        assert p99_ms < 1000
    finally:
        for process in (wrk, server):
            if process is not None:
                process.kill()
                process.wait()


# -- 16. disconnects -----------------------------------------------------------------------------


RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset


@pytest.mark.parametrize("reset", [False, True], ids=["close", "reset"])
def test_client_gone_before_its_answer_calls_on_disconnect_once(
    serve: Callable[..., Stub], reset: bool
) -> None:
    stub = serve(RecordingApp(hold=True))
    client = Client(stub.port).send(get(b"/gone"))
    request = wait_until(lambda: stub.app.requests, "the request")[0]
    if reset:
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
    client.close()
    wait_until(lambda: stub.app.disconnected, "on_disconnect")
    stub.respond(request)  # to a client that is gone: no harm done
    wait_until(lambda: stub.server.connection_count == 0, "the connection to go")
    assert stub.app.disconnected == [b"/gone"]
    assert stub.stats.disconnects == int(reset)  # lost unanswered; or answered into the void


def test_client_gone_drops_its_queued_and_partial_requests(serve: Callable[..., Stub]) -> None:
    stub = serve(RecordingApp(hold=True))
    client = Client(stub.port).send(get(b"/1") + get(b"/2") + b"GET /partial HTTP/1.1\r\n")
    request = wait_until(lambda: stub.app.requests, "the first request")[0]
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
    client.close()
    stub.respond(request)  # reading is paused (see the pipelining test): the write finds out
    wait_until(lambda: stub.server.connection_count == 0, "the connection to go")
    assert stub.app.targets() == [b"/1"]  # neither the queued nor the partial request


# -- 17. non-ASCII in the request target ---------------------------------------------------------


def test_percent_encoded_target_passes_through_raw(serve: Callable[..., Stub]) -> None:
    stub = serve()
    seen = Client(stub.port).send(get(b"/a%20b/?q=%D0%BF%D1%80%D0%B8&x")).response().json()
    assert (seen["path"], seen["query"]) == ("/a%20b/", "q=%D0%BF%D1%80%D0%B8&x")


def test_raw_utf8_in_the_target_is_refused_by_llhttp(serve: Callable[..., Stub]) -> None:
    """llhttp's URL grammar has no leniency for bytes over 0x7f: where the platform's router
    passes them through, this layer could only by parsing the request line itself."""
    stub = serve()
    client = Client(stub.port).send(get("/?q=при".encode()))
    assert_refused(client.response(), 400, "BadRequest")


def test_raw_bytes_in_header_values_pass_through(serve: Callable[..., Stub]) -> None:
    stub = serve()
    seen = Client(stub.port).send(get(b"/", b"X-V: \xd0\xbf\xff\r\n")).response().json()
    assert ["x-v", "\xd0\xbf\xff"] in seen["headers"]


def test_absolute_form_target(serve: Callable[..., Stub]) -> None:
    stub = serve()
    seen = Client(stub.port).send(get(b"http://evil.example/x/y?z=1")).response().json()
    assert (seen["target"], seen["path"], seen["query"]) == \
        ("http://evil.example/x/y?z=1", "/x/y", "z=1")
    assert seen["client"][0] == "127.0.0.1"


# -- stopping ------------------------------------------------------------------------------------


def test_stop_accepting_closes_idle_connections_and_finishes_busy_ones(
    serve: Callable[..., Stub]
) -> None:
    stub = serve(RecordingApp(hold=True))
    idle = Client(stub.port)
    busy = Client(stub.port).send(get(b"/busy"))
    request = wait_until(lambda: stub.app.requests, "the busy request")[0]
    stub.call(stub.server.stop_accepting)
    assert idle.closed()
    with pytest.raises(ConnectionRefusedError):
        Client(stub.port)
    waiting = asyncio.run_coroutine_threadsafe(stub.server.wait_closed(DEADLINE_S), stub.loop)
    stub.respond(request)
    response = busy.response()
    assert (response.status, response.headers[b"connection"]) == (200, b"close")
    assert busy.closed()
    waiting.result(DEADLINE_S)
    assert stub.server.connection_count == 0


def test_wait_closed_aborts_what_is_left_at_its_timeout(serve: Callable[..., Stub]) -> None:
    stub = serve(RecordingApp(hold=True))
    client = Client(stub.port).send(get(b"/never"))
    wait_until(lambda: stub.app.requests, "the request")
    stub.call(stub.server.stop_accepting)
    started = time.monotonic()
    asyncio.run_coroutine_threadsafe(stub.server.wait_closed(0.2), stub.loop).result(DEADLINE_S)
    assert 0.15 < time.monotonic() - started < 1.0
    assert client.closed()
    assert stub.server.connection_count == 0
    assert stub.app.disconnected == [b"/never"]
