"""End to end: several instances serving calls in parallel, as child processes."""

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import psutil
import pytest
from e2e_helpers import Supervisor, call_instance, ok_json, pool_tree, serving_pid

pytestmark = pytest.mark.timeout(30)

INSTANCES = 4
SLEEP_S = 1.0


@dataclass(frozen=True)
class ParallelSleeps:
    """Four one-second sleeps sent at once to the four-instance router."""

    responses: list[httpx.Response]
    elapsed_s: float

    @property
    def identities(self) -> set[str]:
        """The identities of the instances that ran the sleeps (see functions/instance_id.py)."""
        return {ok_json(response)["identity"] for response in self.responses}


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
    assert len(parallel_sleeps.identities) == INSTANCES


def test_instances_are_children_in_their_own_sessions(
    parallel_sleeps: ParallelSleeps, router_pool: Supervisor
) -> None:
    # The workers the supervisor started (in the ns tier, the keepers outside the namespaces).
    pids = {serving_pid(router_pool, response) for response in parallel_sleeps.responses}
    assert len(pids) == INSTANCES
    supervisor_group = os.getpgid(router_pool.pid)
    for pid in pids:
        assert psutil.Process(pid).ppid() == router_pool.pid
        assert os.getpgid(pid) != supervisor_group
        assert os.getsid(pid) != os.getsid(router_pool.pid)


def test_every_process_below_the_supervisor_is_a_ready_instance(
    parallel_sleeps: ParallelSleeps, router_pool: Supervisor
) -> None:
    tree = pool_tree(router_pool)
    assert not tree.others, tree.others
    assert len(tree.workers) >= INSTANCES
    for chain in tree.workers.values():
        # The instance's processes stay in its session, whatever the sandbox adds to it.
        assert {os.getsid(process.pid) for process in chain} == {chain[0].pid}


def test_parallel_calls_ran_on_distinct_instance_ids(
    parallel_sleeps: ParallelSleeps, router_pool: Supervisor
) -> None:
    request_ids = [response.headers["X-Request-Id"] for response in parallel_sleeps.responses]
    instances = {call_instance(router_pool, request_id) for request_id in request_ids}
    assert len(instances) == INSTANCES
    assert all(type(instance) is int for instance in instances)
