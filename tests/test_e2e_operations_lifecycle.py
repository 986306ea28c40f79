"""End to end: graceful and forced stops, workers dying with their supervisor, startup and
per-call log lines in each format and at a raised log level."""

import json
import re
import signal
import socket
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor

import httpx
import psutil
import pytest
from e2e_helpers import (
    POLL_INTERVAL_S,
    Launch,
    Supervisor,
    assert_refusal,
    complete_lines,
    is_alive,
    ok_json,
    pool_tree,
    wait_busy,
    wait_queued,
)

pytestmark = pytest.mark.timeout(30)

OPS = "ops.handler"
ONE_INSTANCE = ("--instances", "1", "--spares", "0")
IN_FLIGHT_S = 1.5
STOP_LISTENING_S = 1.0
EXIT_DEADLINE_S = 3.0
ORPHAN_DEADLINE_S = 5.0
JSON_FIELDS = {"time", "level", "request_id", "instance", "function", "message"}
LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR"}
ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:?\d\d)")
ENFORCEMENT = {
    "auto": re.compile(r"enforced by (cgroup v[12] \(.+\)|watchdog \(.+\))"),
    "watchdog": re.compile(r"enforced by watchdog \(.+\)"),
}


def refuses_connections(port: int, timeout_s: float) -> bool:
    """Whether connecting to the port is refused within `timeout_s` (the listener is closed)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=timeout_s).close()
        except ConnectionRefusedError:
            return True
        time.sleep(POLL_INTERVAL_S)
    return False


def result_or_error(call: Future[httpx.Response]) -> httpx.Response | httpx.TransportError:
    """The call's response, or the transport error it ended with (e.g. connection closed)."""
    try:
        return call.result()
    except httpx.TransportError as exc:
        return exc


def still_running(processes: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Wait up to `timeout_s` for the processes to end; those still running then."""
    deadline = time.monotonic() + timeout_s
    while (alive := [process for process in processes if is_alive(process)]) and (
        time.monotonic() < deadline
    ):
        time.sleep(POLL_INTERVAL_S)
    return alive


# -- stopping ----------------------------------------------------------------------------------


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_signal_stops_listening_and_lets_calls_finish(
    launch_supervisor: Launch, background: ThreadPoolExecutor, stop_signal: signal.Signals
) -> None:
    supervisor = launch_supervisor(OPS, *ONE_INSTANCE)
    running = background.submit(supervisor.call, "sleep", seconds=IN_FLIGHT_S)
    wait_busy(supervisor, 1)
    waiting = background.submit(supervisor.call, "sleep")
    wait_queued(supervisor, 1)
    supervisor.send_signal(stop_signal)
    assert refuses_connections(supervisor.port, STOP_LISTENING_S)
    assert not running.done(), "the call in flight should still be running"
    ok_json(running.result())
    ok_json(waiting.result())
    assert supervisor.wait_exit(EXIT_DEADLINE_S) == 0


def test_calls_left_at_the_graceful_timeout_get_503(
    launch_supervisor: Launch, background: ThreadPoolExecutor
) -> None:
    supervisor = launch_supervisor(OPS, *ONE_INSTANCE, "--timeout", "10",
                                   "--graceful-timeout", "1")
    running = background.submit(supervisor.call, "sleep", seconds=5)
    wait_busy(supervisor, 1)
    waiting = background.submit(supervisor.call, "sleep")
    wait_queued(supervisor, 1)
    signalled = time.monotonic()
    supervisor.send_signal(signal.SIGTERM)
    for call in (running, waiting):
        assert_refusal(call.result(), 503, "ServiceUnavailable", "")
    assert 0.9 <= time.monotonic() - signalled < 2.5
    assert supervisor.wait_exit(EXIT_DEADLINE_S) == 0


@pytest.mark.parametrize("second_signal", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_second_signal_stops_at_once(
    launch_supervisor: Launch, background: ThreadPoolExecutor, second_signal: signal.Signals
) -> None:
    supervisor = launch_supervisor(OPS, *ONE_INSTANCE, "--timeout", "10")
    running = background.submit(supervisor.call, "sleep", seconds=5)
    wait_busy(supervisor, 1)
    supervisor.send_signal(signal.SIGTERM)
    assert refuses_connections(supervisor.port, STOP_LISTENING_S)
    signalled = time.monotonic()
    supervisor.send_signal(second_signal)
    assert supervisor.wait_exit(EXIT_DEADLINE_S) == 0
    assert time.monotonic() - signalled < EXIT_DEADLINE_S
    outcome = result_or_error(running)
    if isinstance(outcome, httpx.Response):
        assert_refusal(outcome, 503, "ServiceUnavailable", "")


def test_workers_die_with_a_killed_supervisor(
    launch_supervisor: Launch, background: ThreadPoolExecutor
) -> None:
    supervisor = launch_supervisor(OPS, "--instances", "2", "--spares", "1", "--timeout", "10")
    running = background.submit(supervisor.call, "sleep", seconds=5)
    wait_busy(supervisor, 1)
    # Every process below the supervisor: its 3 workers (the instances' own processes, as many
    # as the sandbox tier makes) and nothing else.
    tree = pool_tree(supervisor)
    assert len(tree.workers) == 3 and not tree.others, tree
    workers = [process for chain in tree.workers.values() for process in chain]
    supervisor.send_signal(signal.SIGKILL)
    assert supervisor.wait_exit(EXIT_DEADLINE_S) == -signal.SIGKILL
    orphans = still_running(workers, ORPHAN_DEADLINE_S)
    assert orphans == [], f"workers outlived their supervisor: {orphans}"
    assert isinstance(result_or_error(running), httpx.TransportError)


# -- startup -----------------------------------------------------------------------------------


@pytest.mark.parametrize("enforcement", sorted(ENFORCEMENT))
def test_startup_log_says_how_it_serves(launch_supervisor: Launch, enforcement: str) -> None:
    supervisor = launch_supervisor(OPS, "--instances", "2", "--spares", "1", "--timeout", "3",
                                   "--memory", "96", "--memory-enforcement", enforcement)
    log = supervisor.log_text()
    [startup] = [line for line in log.splitlines()
                 if f"http://127.0.0.1:{supervisor.port}" in line]
    assert OPS in startup
    for detail in (r"\b2 instance", r"\b1 spare", r"\btimeout 3(\.0)? ?s\b", r"\b96 MB\b"):
        assert re.search(detail, startup), (detail, startup)
    assert ENFORCEMENT[enforcement].search(startup), startup
    assert re.search(r"all 3 instances ready in \d+ ms", log), log


# -- log formats and levels --------------------------------------------------------------------


def say(supervisor: Supervisor) -> tuple[str, str]:
    """Make a call that prints a unique text; (the text, the call's request id)."""
    text = f"said-{uuid.uuid4().hex}"
    response = supervisor.call("print", text=text)
    assert response.status_code == 200, response.text
    return text, response.headers["X-Request-Id"]


def fail(supervisor: Supervisor) -> str:
    """Make a call that raises; its request id."""
    response = supervisor.call("raise")
    assert response.status_code == 502, response.text
    return response.headers["X-Request-Id"]


def test_json_log_has_every_line_a_record_from_start_to_stop(launch_supervisor: Launch) -> None:
    supervisor = launch_supervisor(OPS, "--log-format", "json")
    text, said_id = say(supervisor)
    failed_id = fail(supervisor)
    supervisor.wait_for_text(f"REPORT RequestID: {failed_id} ")
    assert supervisor.stop() == []
    records = [json.loads(line) for line in complete_lines(supervisor.log_text())]
    for record in records:
        assert set(record) >= JSON_FIELDS, record
        assert record["level"] in LEVELS and ISO_TIME.fullmatch(record["time"]), record
    startup = [r for r in records if f"127.0.0.1:{supervisor.port}" in r["message"]]
    assert [(r["request_id"], r["instance"]) for r in startup] == [(None, None)], startup
    [said] = [r for r in records if r["message"] == text]
    assert said["request_id"] == said_id
    [error] = [r for r in records if r["message"].startswith(f"ERROR RequestID: {failed_id} ")]
    assert (error["level"], error["request_id"]) == ("ERROR", failed_id)
    assert any("SIGTERM" in r["message"] and r["request_id"] is None for r in records)


def is_json_object(line: str) -> bool:
    """Whether the line parses as a JSON object."""
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def test_text_log_tags_function_output_with_the_request_id(launch_supervisor: Launch) -> None:
    supervisor = launch_supervisor(OPS, "--log-format", "text")
    text, request_id = say(supervisor)
    log = supervisor.wait_for_text(f"REPORT RequestID: {request_id} ")
    lines = complete_lines(log)
    assert not [line for line in lines if is_json_object(line)]
    [said] = [line for line in lines if text in line]
    assert re.search(rf"\[\d+ {re.escape(request_id)}\] {text}$", said), said


def test_warning_level_hides_call_lines_but_keeps_errors(launch_supervisor: Launch) -> None:
    supervisor = launch_supervisor(OPS, "--log-level", "warning", wait_instances=False)
    supervisor.wait_until(lambda: supervisor.request("GET", "/readyz").status_code == 200,
                          "/readyz 200")
    _, said_id = say(supervisor)
    failed_id = fail(supervisor)
    log = supervisor.wait_for_text(f"ERROR RequestID: {failed_id} ")
    for request_id in (said_id, failed_id):
        for kind in ("START", "END", "REPORT"):
            assert f"{kind} RequestID: {request_id}" not in log, log
