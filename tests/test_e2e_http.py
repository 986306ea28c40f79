"""End to end: HTTP/1.1 as the real command speaks it, over raw sockets.

Keep-alive and its idle timeout, pipelining, chunked bodies and their limit, 100-continue, HEAD,
the head size bound (431), trailers, half-closed clients, slow readers, smuggling attempts,
upgrades and the HTTP/2 preface, raw non-ASCII request targets. Every refusal closes the
connection, so that nothing the client sends after it is taken for a request.
"""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httptools
import psutil
import pytest
from e2e_helpers import Launch, Supervisor, ok_json, scrape_metrics

pytestmark = pytest.mark.timeout(30)

PROBE = "http_probe.handler"
SOCKET_TIMEOUT_S = 5.0
# The HTTP layer's keep-alive timeout (http11.HttpLimits), and how late its sweep may see it.
KEEPALIVE_S = 5.0
SWEEP_S = 0.5
MAX_HEAD_BYTES = 64 * 1024
BODY_LIMIT_MB = 1
MB = 1024 * 1024
CHUNK_BYTES = 64 * 1024
CHUNKED_BODY_BYTES = 32 * MB
HUGE_HEADER_BYTES = 20 * MB
RSS_GROWTH_LIMIT_MB = 20
SLOW_READERS = 6
SLOW_READER_BYTES = 3_000_000
PROMPT_S = 0.5
CALLS_TOTAL = "sfsupervisor_calls_total"


@pytest.fixture(scope="module")
def probe(launch_module_supervisor: Launch) -> Supervisor:
    """http_probe.handler on two instances, with a 1 MB request body limit."""
    return launch_module_supervisor(PROBE, "--instances", "2", "--max-request-mb",
                                    str(BODY_LIMIT_MB))


# -- the client side -----------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: dict[bytes, bytes]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """A raw connection whose responses are read by httptools' response parser."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.sock = socket.create_connection(("127.0.0.1", supervisor.port), SOCKET_TIMEOUT_S)
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

    def closed_within(self, timeout_s: float) -> bool:
        """Whether the server closes the connection (EOF or reset) within timeout_s, with
        nothing more sent."""
        if not select.select([self.sock], [], [], timeout_s)[0]:
            return False
        try:
            return self.sock.recv(1 << 16) == b""
        except ConnectionResetError:
            return True

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._done.append(Response(self._parser.get_status_code(), self._headers,
                                   b"".join(self._body)))
        self._headers, self._body = {}, []


@pytest.fixture
def connect(probe: Supervisor) -> Iterator[Any]:
    """Open raw connections to the probe supervisor; all are closed after the test."""
    clients: list[Client] = []

    def open_client() -> Client:
        clients.append(Client(probe))
        return clients[-1]

    yield open_client
    for client in clients:
        client.sock.close()


def get(target: str = "/", extra: str = "") -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: probe\r\n{extra}\r\n".encode()


def assert_refused(response: Response, status: int, error_type: str) -> None:
    """A refusal by the runtime: the status, its JSON error, and the connection closing."""
    assert response.status == status, response
    assert response.headers[b"connection"] == b"close"
    assert json.loads(response.body)["errorType"] == error_type


def rss_mb(supervisor: Supervisor) -> float:
    return psutil.Process(supervisor.pid).memory_info().rss / MB


# -- keep-alive and pipelining -------------------------------------------------------------------


def test_keep_alive_serves_requests_on_one_connection_then_closes_it_when_idle(connect) -> None:
    client = connect()
    for number in range(3):
        response = client.send(get(f"/?n={number}")).response()
        assert response.status == 200
        assert response.json()["query"] == {"n": str(number)}
        assert b"connection" not in response.headers
    answered = time.monotonic()
    assert not client.closed_within(1.0), "closed before the keep-alive timeout"
    assert client.closed_within(KEEPALIVE_S + SWEEP_S + 1.0), "idle connection left open"
    assert time.monotonic() - answered >= KEEPALIVE_S * 0.9


def test_pipelined_requests_are_answered_in_order(connect) -> None:
    client = connect().send(b"".join(get(f"/?n={number}") for number in range(5)))
    queries = [client.response().json()["query"]["n"] for _ in range(5)]
    assert queries == ["0", "1", "2", "3", "4"]


def test_head_gets_the_length_and_no_body_and_the_connection_goes_on(connect) -> None:
    client = connect().send(b"HEAD /?size=1000 HTTP/1.1\r\nHost: probe\r\n\r\n"
                            + get("/?size=7"))
    data = b""
    while data.count(b"HTTP/1.1 200") < 2 or not data.endswith(b"xxxxxxx"):
        data += client.sock.recv(65536)
    head_response, get_response = data.split(b"HTTP/1.1 200")[1:]
    assert b"content-length: 1000\r\n" in head_response.lower()
    assert head_response.endswith(b"\r\n\r\n")  # the header section, and no body
    assert get_response.split(b"\r\n\r\n", 1)[1] == b"x" * 7


def test_a_client_that_half_closes_after_its_request_gets_the_answer(connect) -> None:
    for target in ("/?n=half", "/healthz"):
        client = connect().send(get(target))
        client.sock.shutdown(socket.SHUT_WR)
        assert client.response().status == 200
        assert client.closed_within(SOCKET_TIMEOUT_S)


# -- bodies ----------------------------------------------------------------------------------


def chunked(*pieces: bytes, trailers: bytes = b"") -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) \
        + b"0\r\n" + trailers + b"\r\n"


def test_a_chunked_body_reaches_the_function(connect) -> None:
    head = b"POST / HTTP/1.1\r\nHost: probe\r\nTransfer-Encoding: chunked\r\n\r\n"
    response = connect().send(head + chunked(b"hello, ", b"chunked ", b"world")).response()
    assert response.json()["body"] == "hello, chunked world"


def test_trailers_never_reach_the_event(connect) -> None:
    head = (b"POST / HTTP/1.1\r\nHost: probe\r\nX-User: alice\r\nContent-Type: text/plain\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    trailers = b"X-User: admin\r\nContent-Type: application/json\r\nHost: evil.example\r\n"
    response = connect().send(head + chunked(b'{"a":1}', trailers=trailers)).response()
    seen = response.json()
    assert seen["headers"]["X-User"] == "alice"
    assert seen["headers"]["Content-Type"] == "text/plain"
    assert seen["headers"]["Host"] == "probe"
    assert seen["body"] == '{"a":1}'


def test_a_chunked_body_gets_413_as_soon_as_it_passes_the_limit(connect) -> None:
    client = connect().send(b"POST / HTTP/1.1\r\nHost: probe\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (CHUNK_BYTES, b"x" * CHUNK_BYTES)
    sent = 0
    while not select.select([client.sock], [], [], 0)[0] and sent < CHUNKED_BODY_BYTES:
        try:
            client.sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            break
        sent += CHUNK_BYTES
    assert_refused(client.response(), 413, "RequestTooLarge")
    # Answered long before the body's end (what is in flight on loopback is a few MB at most).
    assert sent < CHUNKED_BODY_BYTES / 2, f"answered only after {sent} bytes"
    assert client.closed_within(SOCKET_TIMEOUT_S)


@pytest.mark.parametrize("expect", [False, True], ids=["plain", "expect-100-continue"])
def test_413_for_an_unread_body_closes_the_connection(connect, expect: bool) -> None:
    extra = "Expect: 100-continue\r\n" if expect else ""
    head = f"POST / HTTP/1.1\r\nHost: probe\r\n{extra}Content-Length: {10 * MB}\r\n\r\n"
    client = connect().send(head.encode())
    response = client.response()
    assert_refused(response, 413, "RequestTooLarge")
    try:  # what follows is never taken for a request: the server has stopped reading
        client.send(get("/?n=swallowed"))
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert client.closed_within(SOCKET_TIMEOUT_S)


def test_expect_100_continue_gets_100_before_the_body(connect) -> None:
    client = connect().send(b"POST / HTTP/1.1\r\nHost: probe\r\nExpect: 100-continue\r\n"
                            b"Content-Length: 5\r\n\r\n")
    assert client.response().status == 100
    response = client.send(b"hello").response()
    assert response.status == 200
    assert response.json()["body"] == "hello"


# -- sizes and slow clients --------------------------------------------------------------------


@pytest.mark.parametrize("where", ["header", "target"])
def test_a_head_over_64_kib_gets_431(connect, where: str) -> None:
    filler = "a" * (MAX_HEAD_BYTES + 100)
    request = get(f"/?q={filler}") if where == "target" else get("/", f"X-Big: {filler}\r\n")
    client = connect()
    try:
        client.send(request)
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert_refused(client.response(), 431, "RequestHeaderFieldsTooLarge")
    assert client.closed_within(SOCKET_TIMEOUT_S)


def test_a_20_mb_header_is_refused_at_once_and_harms_nothing(probe: Supervisor, connect) -> None:
    before = scrape_metrics(probe)
    rss_before = rss_mb(probe)
    client = connect()
    client.sock.sendall(b"GET / HTTP/1.1\r\nHost: probe\r\nX-Big: ")
    started = time.monotonic()
    try:
        client.sock.sendall(b"a" * HUGE_HEADER_BYTES)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server stopped reading and closed: what is left is not wanted
    assert_refused(client.response(), 431, "RequestHeaderFieldsTooLarge")
    assert time.monotonic() - started < PROMPT_S * 4
    assert ok_json(probe.request("GET", "/", params={"n": "after"}))["query"] == {"n": "after"}
    after = scrape_metrics(probe)
    restarts = "sfsupervisor_instance_restarts_total"
    assert after.value(restarts) == before.value(restarts)
    assert rss_mb(probe) - rss_before < RSS_GROWTH_LIMIT_MB


def test_slow_readers_hold_up_no_one(probe: Supervisor, connect) -> None:
    rss_before = rss_mb(probe)
    readers = [connect().send(get(f"/?size={SLOW_READER_BYTES}")) for _ in range(SLOW_READERS)]
    for number in range(5):
        started = time.monotonic()
        ok_json(probe.request("GET", "/", params={"n": number}))
        assert time.monotonic() - started < PROMPT_S
    growth = rss_mb(probe) - rss_before
    print(f"{SLOW_READERS} unread {SLOW_READER_BYTES / MB:.1f} MB responses: supervisor RSS "
          f"+{growth:.1f} MB")
    assert growth < SLOW_READERS * SLOW_READER_BYTES / MB + RSS_GROWTH_LIMIT_MB
    assert all(not reader.closed_within(0) for reader in readers)


# -- what is refused ---------------------------------------------------------------------------


SMUGGLING = {
    "cl-te": b"POST / HTTP/1.1\r\nHost: probe\r\nContent-Length: 55\r\n"
             b"Transfer-Encoding: chunked\r\n\r\n"
             b"0\r\n\r\nGET /?n=smuggled HTTP/1.1\r\nHost: probe\r\n\r\n",
    "two-lengths": b"POST / HTTP/1.1\r\nHost: probe\r\nContent-Length: 5\r\n"
                   b"Content-Length: 10\r\n\r\nhelloGET /?n=smuggled HTTP/1.1\r\n\r\n",
    "equal-lengths": b"POST / HTTP/1.1\r\nHost: probe\r\nContent-Length: 5\r\n"
                     b"Content-Length: 5\r\n\r\nhello",
}


@pytest.mark.parametrize("request_bytes", SMUGGLING.values(), ids=SMUGGLING.keys())
def test_smuggling_attempts_get_400_and_run_nothing(probe: Supervisor, connect,
                                                    request_bytes: bytes) -> None:
    ok_before = scrape_metrics(probe).value(CALLS_TOTAL, outcome="ok")
    client = connect().send(request_bytes)
    assert_refused(client.response(), 400, "BadRequest")
    assert client.closed_within(SOCKET_TIMEOUT_S)
    assert scrape_metrics(probe).value(CALLS_TOTAL, outcome="ok") == ok_before


def test_the_http2_preface_is_refused_and_logs_nothing(probe: Supervisor, connect) -> None:
    log_before = probe.log_text()
    client = connect().send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    response = client.response()
    assert response.status in (400, 505)
    assert response.headers[b"connection"] == b"close"
    assert client.closed_within(SOCKET_TIMEOUT_S)
    assert "WARNING" not in probe.log_text()[len(log_before):]


def test_an_upgrade_is_served_as_plain_http_and_the_connection_closes(connect) -> None:
    client = connect().send(get("/?n=upgrade", "Connection: Upgrade\r\nUpgrade: websocket\r\n"))
    response = client.response()
    assert response.status == 200
    assert response.json()["query"] == {"n": "upgrade"}
    assert response.headers[b"connection"] == b"close"
    assert client.closed_within(SOCKET_TIMEOUT_S)


def test_an_upgrade_with_a_body_is_refused(connect) -> None:
    client = connect().send(b"POST / HTTP/1.1\r\nHost: probe\r\nConnection: Upgrade\r\n"
                            b"Upgrade: h2c\r\nContent-Length: 5\r\n\r\nhello")
    assert_refused(client.response(), 400, "BadRequest")


def test_raw_non_ascii_in_the_target_gets_400_and_percent_encoded_passes(connect) -> None:
    assert connect().send(b"GET /?q=\xd0\xbf HTTP/1.1\r\nHost: probe\r\n\r\n").response() \
        .status == 400
    response = connect().send(get("/?q=%D0%BF")).response()
    assert response.json()["query"] == {"q": "\u043f"}
