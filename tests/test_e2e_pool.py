"""End to end: warm spares, the concurrency limit, and recycling with --max-calls."""

from __future__ import annotations

import collections
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from e2e_helpers import Launch, ok_json

pytestmark = pytest.mark.timeout(60)

IMPORT_S = 0.5  # tests/functions/slow_boot.py's import time
# A call that found a warm instance answers well before a cold import could finish.
WARM_CALL_S = 0.3


def timed(call):
    """Run `call()`; return its result and how long it took."""
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


def test_a_warm_spare_serves_the_call_after_a_crash(launch_supervisor: Launch) -> None:
    supervisor = launch_supervisor("slow_boot.handler", "--instances", "1", "--spares", "1")
    crashed = ok_json(supervisor.call("identity"))["identity"]
    assert supervisor.call("crash").status_code == 502
    response, elapsed_s = timed(lambda: supervisor.call("identity"))
    assert ok_json(response)["identity"] != crashed
    assert elapsed_s < WARM_CALL_S


def test_without_spares_the_call_after_a_crash_waits_for_a_cold_start(
    launch_supervisor: Launch,
) -> None:
    supervisor = launch_supervisor("slow_boot.handler", "--instances", "1", "--spares", "0")
    assert supervisor.call("crash").status_code == 502
    response, elapsed_s = timed(lambda: supervisor.call("identity"))
    assert response.status_code == 200
    assert elapsed_s >= IMPORT_S * 0.9


def test_at_start_the_spare_imports_once_the_instances_are_ready(
    launch_supervisor: Launch,
) -> None:
    """Imports share the CPU: a spare importing with the instances would delay the first call."""
    supervisor = launch_supervisor("slow_boot.handler", "--instances", "2", "--spares", "1",
                                   "--log-level", "debug")
    log = supervisor.log_text()
    started = [int(found) for found in re.findall(r"instance (\d+) started \(pid", log)]
    ready_at = {int(found[1]): found.start() for found in re.finditer(r"instance (\d+) ready", log)}
    assert len(started) == 3 and len(ready_at) == 3, log
    spare = started[-1]
    spare_started_at = log.index(f"instance {spare} started (pid")
    assert all(ready_at[instance] < spare_started_at for instance in started[:2]), log
    assert "all 3 instances ready" in log


def test_spares_add_no_concurrency(launch_supervisor: Launch) -> None:
    supervisor = launch_supervisor("slow_boot.handler", "--instances", "1", "--spares", "2")
    with ThreadPoolExecutor(2) as pool:
        started = time.monotonic()
        calls = [pool.submit(supervisor.call, "sleep", seconds=0.5) for _ in range(2)]
        identities = {ok_json(call.result())["identity"] for call in calls}
        elapsed_s = time.monotonic() - started
    assert elapsed_s >= 0.95  # one after the other, though two more instances sat idle
    assert len(identities) == 1  # the instance that finished last serves next: spares stay spare


def test_max_calls_recycles_with_the_replacement_ready_first(launch_supervisor: Launch) -> None:
    max_calls = 5
    supervisor = launch_supervisor(
        "slow_boot.handler", "--instances", "1", "--spares", "0", "--max-calls", str(max_calls))
    served_by: list[str] = []
    slowest_s = 0.0
    deadline = time.monotonic() + 20
    while len(set(served_by)) < 3 and time.monotonic() < deadline:
        response, elapsed_s = timed(lambda: supervisor.call("identity"))
        served_by.append(ok_json(response)["identity"])
        slowest_s = max(slowest_s, elapsed_s)
        time.sleep(0.02)
    calls_per_instance = collections.Counter(served_by)
    assert len(calls_per_instance) >= 3, calls_per_instance
    # Each recycled instance served its limit (max_calls less up to a tenth: here exactly 5),
    # and went on serving until its replacement had imported: no call waited for a cold start.
    recycled = [instance for instance in calls_per_instance if instance != served_by[-1]]
    assert all(calls_per_instance[instance] >= max_calls for instance in recycled), \
        calls_per_instance
    assert slowest_s < WARM_CALL_S
    assert "recycling it once its replacement is ready" in supervisor.log_text()
