"""End to end: admission control (429), request size limits (413), slow clients, overload."""

import asyncio
import contextlib
import http.client
import select
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from e2e_helpers import (
    Launch,
    Supervisor,
    assert_refusal,
    ok_json,
    scrape_metrics,
    shared_file,
    wait_busy,
    wait_metric,
    wait_queued,
)

pytestmark = pytest.mark.timeout(30)

OPS = "ops.handler"
ONE_INSTANCE = ("--instances", "1", "--spares", "0")
MB = 1024 * 1024
HOLD_S = 1.0
PROMPT_REJECTION_S = 0.1
READ_TIMEOUT_S = 1.0
CLOSE_DEADLINE_S = 3.0
SLOWLORIS_CONNECTIONS = 20
CALLS_BESIDE_SLOWLORIS = 5
PROMPT_CALL_S = 0.5
TRICKLE_INTERVAL_S = 0.1
SOCKET_TIMEOUT_S = 5.0
CHUNK_BYTES = 64 * 1024
OVERLOAD_REQUESTS = 200
OVERLOAD_QUEUE = 4
OVERLOAD_CALL_S = 0.05
OVERLOAD_PROMPT_S = 3.0
CALLS_TOTAL = "sfsupervisor_calls_total"


@contextlib.contextmanager
def raw_connection(supervisor: Supervisor) -> Iterator[socket.socket]:
    """A plain TCP connection to the supervisor, closed on exit."""
    with socket.create_connection(("127.0.0.1", supervisor.port), SOCKET_TIMEOUT_S) as sock:
        yield sock


def read_response(sock: socket.socket) -> httpx.Response:
    """Read one HTTP response from the socket (as an httpx.Response, for the assertions)."""
    raw = http.client.HTTPResponse(sock)
    raw.begin()
    return httpx.Response(raw.status, headers=raw.getheaders(), content=raw.read())


def wait_closed(sock: socket.socket, timeout_s: float) -> bytes | None:
    """Read until the peer closes the connection; what it sent, or None if still open."""
    received = b""
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([sock], [], [], left)[0]:
            break
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return received
        if not data:
            return received
        received += data
    return None


def is_open(sock: socket.socket) -> bool:
    """Whether the peer has neither closed the connection nor sent anything on it."""
    return not select.select([sock], [], [], 0)[0]


# -- the queue ---------------------------------------------------------------------------------


@pytest.mark.parametrize("max_queue", [0, 2])
def test_call_beyond_a_full_queue_gets_429_at_once(
    launch_supervisor: Launch, background: ThreadPoolExecutor, max_queue: int
) -> None:
    supervisor = launch_supervisor(OPS, *ONE_INSTANCE, "--max-queue", str(max_queue))
    running = background.submit(supervisor.call, "sleep", seconds=HOLD_S)
    wait_busy(supervisor, 1)
    queued = [background.submit(supervisor.call, "sleep") for _ in range(max_queue)]
    wait_queued(supervisor, max_queue)
    started = time.perf_counter()
    response = supervisor.call("sleep")
    elapsed_s = time.perf_counter() - started
    assert_refusal(response, 429, "TooManyRequests", "")
    assert response.json()["errorMessage"].startswith("too many calls in progress: ")
    assert elapsed_s < PROMPT_REJECTION_S
    for call in [running, *queued]:
        ok_json(call.result())


def test_call_waiting_longer_than_the_timeout_gets_429(
    launch_supervisor: Launch, background: ThreadPoolExecutor
) -> None:
    supervisor = launch_supervisor(OPS, *ONE_INSTANCE, "--timeout", "1")
    first = background.submit(supervisor.call, "sleep", seconds=0.7)
    wait_busy(supervisor, 1)
    second = background.submit(supervisor.call, "sleep", seconds=0.7)
    wait_queued(supervisor, 1)
    started = time.perf_counter()
    response = supervisor.call("sleep")
    waited_s = time.perf_counter() - started
    assert_refusal(response, 429, "TooManyRequests", "no instance became free")
    assert 0.95 <= waited_s < 1.35, "the 429 should come at the 1 s timeout, before a free slot"
    ok_json(first.result())
    ok_json(second.result())


def test_client_leaving_while_queued_withdraws_its_call(
    launch_supervisor: Launch, background: ThreadPoolExecutor, shared_dir: Path
) -> None:
    marks = shared_file(shared_dir, "marks")
    supervisor = launch_supervisor(OPS, *ONE_INSTANCE, "--env", f"OPS_MARKS={marks}")
    running = background.submit(supervisor.call, "sleep", seconds=HOLD_S, mark="running")
    wait_busy(supervisor, 1)
    with raw_connection(supervisor) as leaver:
        leaver.sendall(b"GET /?action=sleep&mark=left HTTP/1.1\r\nHost: ops\r\n\r\n")
        wait_queued(supervisor, 1)
    wait_metric(supervisor, 1, CALLS_TOTAL, outcome="cancelled")
    assert scrape_metrics(supervisor).value("sfsupervisor_queue_length") == 0
    ok_json(running.result())
    ok_json(supervisor.call("sleep", mark="later"))
    assert marks.read_text().split() == ["running", "later"]
    assert scrape_metrics(supervisor).value(CALLS_TOTAL, outcome="cancelled") == 1
    log = supervisor.log_text()
    assert "Code: 499 Message: ClientClosedRequest" in log
    assert "shutting down" not in log  # a client leaving is not the server stopping


# -- request size ------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=[None, 1], ids=["default-limit", "max-request-mb-1"])
def limited(request: pytest.FixtureRequest, launch_module_supervisor: Launch) -> Supervisor:
    """ops.handler with the default body limit (3.5 MB), or with --max-request-mb 1."""
    options = () if request.param is None else ("--max-request-mb", str(request.param))
    return launch_module_supervisor(OPS, *options)


def body_limit(limited: Supervisor) -> int:
    """The body limit in bytes of a `limited` supervisor."""
    if "--max-request-mb" in limited.argv:
        return int(float(limited.argv[limited.argv.index("--max-request-mb") + 1]) * MB)
    return int(3.5 * MB)


def test_body_at_the_limit_is_accepted(limited: Supervisor) -> None:
    ok_json(limited.request("POST", "/", content=b"x" * body_limit(limited)))


def test_content_length_over_the_limit_gets_413_without_the_body(limited: Supervisor) -> None:
    head = (f"POST / HTTP/1.1\r\nHost: ops\r\nContent-Length: {body_limit(limited) + 1}\r\n\r\n")
    with raw_connection(limited) as sock:
        sock.sendall(head.encode() + b"x" * 1024)
        response = read_response(sock)
    assert_refusal(response, 413, "RequestTooLarge", "")


def send_chunks_until_answered(sock: socket.socket, total: int) -> None:
    """Send a chunked body of `total` bytes, stopping early once the server answers or closes."""
    chunk = b"%x\r\n%s\r\n" % (CHUNK_BYTES, b"x" * CHUNK_BYTES)
    for _ in range(0, total, CHUNK_BYTES):
        if select.select([sock], [], [], 0)[0]:
            return
        try:
            sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            return


def test_chunked_body_over_the_limit_gets_413(limited: Supervisor) -> None:
    head = b"POST / HTTP/1.1\r\nHost: ops\r\nTransfer-Encoding: chunked\r\n\r\n"
    with raw_connection(limited) as sock:
        sock.sendall(head)
        send_chunks_until_answered(sock, body_limit(limited) + 4 * CHUNK_BYTES)
        response = read_response(sock)
    assert_refusal(response, 413, "RequestTooLarge", "")


# -- slow clients ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded(launch_module_supervisor: Launch) -> Supervisor:
    """ops.handler with --read-timeout 1."""
    return launch_module_supervisor(OPS, "--read-timeout", str(READ_TIMEOUT_S))


def open_slowloris(supervisor: Supervisor) -> socket.socket:
    """A connection that sent half a request's headers and will send nothing more."""
    sock = socket.create_connection(("127.0.0.1", supervisor.port), SOCKET_TIMEOUT_S)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: ops\r\nX-Slow: ")
    return sock


def test_slowloris_connections_are_closed_and_do_not_block_calls(guarded: Supervisor) -> None:
    opened = time.monotonic()
    slowloris = [open_slowloris(guarded) for _ in range(SLOWLORIS_CONNECTIONS)]
    try:
        for _ in range(CALLS_BESIDE_SLOWLORIS):
            started = time.monotonic()
            ok_json(guarded.call("sleep"))
            assert time.monotonic() - started < PROMPT_CALL_S
        assert time.monotonic() - opened < READ_TIMEOUT_S * 0.8, "calls too slow to test"
        assert all(is_open(sock) for sock in slowloris), "closed before the read timeout"
        for sock in slowloris:
            left = opened + CLOSE_DEADLINE_S - time.monotonic()
            assert wait_closed(sock, left) == b"", "not closed (or answered) in time"
        assert time.monotonic() - opened >= READ_TIMEOUT_S * 0.9
    finally:
        for sock in slowloris:
            sock.close()


def test_call_running_longer_than_the_read_timeout_is_not_cut(guarded: Supervisor) -> None:
    ok_json(guarded.call("sleep", seconds=READ_TIMEOUT_S * 1.5))


def trickle_until_closed(sock: socket.socket, deadline_s: float) -> float | None:
    """Send a byte every TRICKLE_INTERVAL_S until the server closes; seconds taken, or None."""
    started = time.monotonic()
    while time.monotonic() - started < deadline_s:
        try:
            sock.sendall(b"x")
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - started
        if wait_closed(sock, TRICKLE_INTERVAL_S) is not None:
            return time.monotonic() - started
    return None


def test_trickling_body_is_cut_off(guarded: Supervisor) -> None:
    with raw_connection(guarded) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: ops\r\nContent-Length: 1000\r\n\r\n")
        took_s = trickle_until_closed(sock, CLOSE_DEADLINE_S)
    assert took_s is not None, f"still open after {CLOSE_DEADLINE_S} s"
    assert took_s >= READ_TIMEOUT_S * 0.8


# -- overload ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """The status of one overload request (None: no answer in time) and how long it took."""

    status: int | None
    seconds: float


async def one_request(port: int) -> Answer:
    """One GET sleeping OVERLOAD_CALL_S on its own connection, with a deadline."""
    started = time.monotonic()
    target = f"/?action=sleep&seconds={OVERLOAD_CALL_S}"
    try:
        async with asyncio.timeout(OVERLOAD_PROMPT_S * 2):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET {target} HTTP/1.1\r\nHost: ops\r\nConnection: close\r\n\r\n"
                         .encode())
            status_line = await reader.readline()
            writer.close()
        return Answer(int(status_line.split()[1]), time.monotonic() - started)
    except (TimeoutError, OSError, IndexError, ValueError):
        return Answer(None, time.monotonic() - started)


async def burst(port: int) -> list[Answer]:
    """OVERLOAD_REQUESTS requests at once."""
    return await asyncio.gather(*(one_request(port) for _ in range(OVERLOAD_REQUESTS)))


def test_overload_gets_only_prompt_200s_and_429s(launch_supervisor: Launch) -> None:
    supervisor = launch_supervisor(OPS, *ONE_INSTANCE, "--max-queue", str(OVERLOAD_QUEUE))
    started = time.monotonic()
    answers = asyncio.run(burst(supervisor.port))
    elapsed_s = time.monotonic() - started
    statuses = [answer.status for answer in answers]
    assert set(statuses) <= {200, 429}, sorted(statuses, key=str)
    assert max(answer.seconds for answer in answers) < OVERLOAD_PROMPT_S
    ok, rejected = statuses.count(200), statuses.count(429)
    # One instance runs the calls one after another; a 429 means the queue was full then,
    # and every call in it ran.
    assert ok <= elapsed_s / OVERLOAD_CALL_S + 1, (ok, elapsed_s)
    assert ok >= (1 + OVERLOAD_QUEUE if rejected else OVERLOAD_REQUESTS), (ok, rejected)
    metrics = scrape_metrics(supervisor)
    assert metrics.value(CALLS_TOTAL, outcome="ok") == ok
    assert metrics.value(CALLS_TOTAL, outcome="rejected") == rejected
