"""End to end: the supervisor's own paths (/healthz, /readyz, /metrics) and what /metrics counts."""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from e2e_helpers import (
    Launch,
    Scrape,
    Supervisor,
    assert_refusal,
    ok_json,
    scrape_metrics,
    shared_file,
    wait_busy,
    wait_metric,
)

pytestmark = pytest.mark.timeout(30)

OPS = "ops.handler"
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
RESERVED = ("/healthz", "/readyz", "/metrics")
CALLS_TOTAL = "sfsupervisor_calls_total"
OUTCOMES = {"ok", "error", "timeout", "memory", "crash", "rejected", "cancelled"}
STATES = {"starting", "idle", "busy", "retiring", "dead"}
RESTARTS = "sfsupervisor_instance_restarts_total"
# action, seconds, status, errorType: a call of each failing outcome
FAILING_CALLS = (
    ("raise", 0, 502, "OpsFailure"),
    ("sleep", 3, 504, "JobExecutionTimeoutExceeded"),
    ("hog", 0, 502, "MemoryLimitExceeded"),
    ("exit", 0, 502, "InstanceCrashed"),
)
HISTOGRAMS = ("sfsupervisor_call_duration_seconds", "sfsupervisor_queue_wait_seconds")


def readiness(supervisor: Supervisor) -> httpx.Response:
    """GET /readyz."""
    return supervisor.request("GET", "/readyz")


# -- reserved paths ----------------------------------------------------------------------------


def test_reserved_paths_answer_any_method_and_never_reach_the_function(
    launch_supervisor: Launch, shared_dir: Path
) -> None:
    marks = shared_file(shared_dir, "marks")
    supervisor = launch_supervisor(OPS, "--env", f"OPS_MARKS={marks}")
    for method in METHODS:
        for path in RESERVED:
            response = supervisor.request(method, path, params={"mark": f"{method} {path}"})
            assert response.status_code == 200, (method, path, response.text)
        if method != "HEAD":
            assert supervisor.request(method, "/healthz").text.strip() == "ok"
    ok_json(supervisor.request("GET", "/healthzz", params={"mark": "control"}))
    assert marks.read_text().splitlines() == ["control"]
    metrics = scrape_metrics(supervisor)
    assert metrics.value(CALLS_TOTAL) == metrics.value(CALLS_TOTAL, outcome="ok") == 1


def test_metrics_is_prometheus_text(launch_supervisor: Launch) -> None:
    supervisor = launch_supervisor(OPS)
    response = supervisor.request("GET", "/metrics")
    assert response.headers["Content-Type"].startswith("text/plain"), response.headers
    metrics = scrape_metrics(supervisor)
    assert metrics.label_values(CALLS_TOTAL, "outcome") == OUTCOMES
    assert metrics.label_values("sfsupervisor_instances", "state") == STATES
    assert metrics.value("sfsupervisor_instances", state="idle") == 2
    assert metrics.value("sfsupervisor_queue_length") == 0
    memory = {labels: value for (name, labels), value in metrics.samples.items()
              if name == "sfsupervisor_instance_memory_bytes"}
    assert len(memory) == 2 and min(memory.values()) > 0, memory


def test_readyz_is_503_with_the_import_error(launch_supervisor: Launch) -> None:
    supervisor = launch_supervisor("import_zero.handler", wait_instances=False)

    def init_error() -> dict | None:
        response = readiness(supervisor)
        is_json = response.headers.get("Content-Type", "").startswith("application/json")
        return response.json() if response.status_code == 503 and is_json else None

    error = supervisor.wait_until(init_error, "/readyz 503 with the init error")
    assert error["errorType"] == "ZeroDivisionError", error
    assert "division by zero" in error["errorMessage"], error
    assert supervisor.request("POST", "/readyz").status_code == 503
    assert supervisor.request("GET", "/healthz").status_code == 200


def test_readyz_turns_200_once_an_instance_is_initialized(launch_supervisor: Launch) -> None:
    supervisor = launch_supervisor("slow_init.handler", wait_instances=False)
    assert readiness(supervisor).status_code == 503
    assert supervisor.request("GET", "/healthz").status_code == 200
    supervisor.wait_until(lambda: readiness(supervisor).status_code == 200, "/readyz 200")


# -- counting ----------------------------------------------------------------------------------


def call_when_settled(supervisor: Supervisor, action: str, seconds: float) -> httpx.Response:
    """Call once both instances are idle: with --max-queue 0 a call waits for no replacement."""
    wait_metric(supervisor, 2, "sfsupervisor_instances", state="idle")
    return supervisor.call(action, seconds=seconds)


@pytest.fixture(scope="module")
def counted(launch_module_supervisor: Launch) -> tuple[Scrape, Scrape]:
    """/metrics before and after one call of each outcome, rejected first, cancelled none:
    --instances 1 (and a spare), --timeout 1, --memory 64, --max-queue 0."""
    supervisor = launch_module_supervisor(OPS, "--instances", "1", "--timeout", "1",
                                          "--memory", "64", "--max-queue", "0")
    before = scrape_metrics(supervisor)
    with ThreadPoolExecutor(1) as background:
        running = background.submit(supervisor.call, "sleep", seconds=0.5)
        wait_busy(supervisor, 1)
        assert_refusal(supervisor.call("sleep"), 429, "TooManyRequests", "")
        ok_json(running.result())
    ok_json(call_when_settled(supervisor, "sleep", 0))
    for action, seconds, status, error_type in FAILING_CALLS:
        response = call_when_settled(supervisor, action, seconds)
        assert (response.status_code, response.json()["errorType"]) == (status, error_type)
    wait_metric(supervisor, 2, "sfsupervisor_instances", state="idle")
    return before, scrape_metrics(supervisor)


def moved(counted: tuple[Scrape, Scrape], name: str, **labels: str) -> float:
    """How much the samples `name` with `labels` grew between the two scrapes."""
    before, after = counted
    return after.value(name, **labels) - before.value(name, **labels)


def test_calls_are_counted_by_outcome(counted: tuple[Scrape, Scrape]) -> None:
    expected = {"ok": 2, "error": 1, "timeout": 1, "memory": 1, "crash": 1, "rejected": 1,
                "cancelled": 0}
    assert {outcome: moved(counted, CALLS_TOTAL, outcome=outcome) for outcome in OUTCOMES} \
        == expected


@pytest.mark.parametrize("histogram", HISTOGRAMS)
def test_histograms_count_the_calls_that_reached_an_instance(
    counted: tuple[Scrape, Scrape], histogram: str
) -> None:
    assert moved(counted, f"{histogram}_count") == 6
    assert moved(counted, f"{histogram}_bucket", le="+Inf") == 6


def test_call_durations_add_up(counted: tuple[Scrape, Scrape]) -> None:
    # the 0.5 s sleep and the call stopped at its 1 s timeout, at least
    assert moved(counted, "sfsupervisor_call_duration_seconds_sum") >= 1.4


def test_restarts_are_counted_by_reason(counted: tuple[Scrape, Scrape]) -> None:
    _, after = counted
    reasons = after.label_values(RESTARTS, "reason")
    assert {reason: moved(counted, RESTARTS, reason=reason) for reason in reasons} \
        == {"timeout": 1, "memory": 1, "crash": 1}
