"""End to end: several instances serving calls in parallel, as child processes."""

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import psutil
import pytest
from e2e_helpers import Supervisor, ok_json, only_runtime_line

pytestmark = pytest.mark.timeout(30)

INSTANCES = 4
SLEEP_S = 1.0


@dataclass(frozen=True)
class ParallelSleeps:
    """Four one-second sleeps sent at once to the four-instance router."""

    responses: list[httpx.Response]
    elapsed_s: float

    @property
    def pids(self) -> set[int]:
        """The pids of the instances that ran the sleeps."""
        return {ok_json(response)["pid"] for response in self.responses}


@pytest.fixture(scope="module")
def parallel_sleeps(router_pool: Supervisor) -> ParallelSleeps:
    """Send INSTANCES sleep calls at once and time them all."""
    started = time.monotonic()
    with ThreadPoolExecutor(INSTANCES) as pool:
        responses = list(pool.map(
            lambda _: router_pool.call("sleep", seconds=SLEEP_S), range(INSTANCES)
        ))
    return ParallelSleeps(responses, time.monotonic() - started)


def test_four_instances_run_four_calls_at_once(parallel_sleeps: ParallelSleeps) -> None:
    assert [response.status_code for response in parallel_sleeps.responses] == [200] * INSTANCES
    assert parallel_sleeps.elapsed_s < 1.8 * SLEEP_S
    assert len(parallel_sleeps.pids) == INSTANCES


def test_instances_are_children_in_their_own_sessions(
    parallel_sleeps: ParallelSleeps, router_pool: Supervisor
) -> None:
    supervisor_group = os.getpgid(router_pool.pid)
    for pid in parallel_sleeps.pids:
        assert psutil.Process(pid).ppid() == router_pool.pid
        assert os.getpgid(pid) != supervisor_group
        assert os.getsid(pid) != os.getsid(router_pool.pid)


def test_parallel_calls_ran_on_distinct_instance_ids(
    parallel_sleeps: ParallelSleeps, router_pool: Supervisor
) -> None:
    request_ids = [response.headers["X-Request-Id"] for response in parallel_sleeps.responses]
    records = router_pool.wait_for_reports(request_ids)
    instances = {only_runtime_line(records, "START", request_id)[1]["instance"]
                 for request_id in request_ids}
    assert len(instances) == INSTANCES
    assert all(type(instance) is int for instance in instances)
