"""End to end, the fault matrix: a broken function costs one failed call with a clear error.

Each hostile behaviour of functions/hostile.py runs on a supervisor with 2 instances (+1 spare)
while well-behaved calls keep going in parallel on the same pool. For each: the hostile call gets
its status and error type, every parallel call succeeds, the next call works (on a fresh instance
when the hostile one was killed), the supervisor's memory stays bounded, and no process the call
started is left. Everything runs under combinations of the memory enforcement (the watchdog, or
a cgroup where this machine lets the supervisor make one) and the sandbox tier (`ns`, `uid`,
`none`), each named explicitly: a tier this machine cannot give is skipped, but fails in CI.

The instance that served a call and its process are read from the supervisor's log (its START
and READY lines): what a function could report of itself is seen from inside its sandbox. The
processes a hostile call starts carry its tag on their command line, so the test sees them from
the host, checks that they ran, then that every one of them is gone.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from e2e_helpers import (
    ENFORCED_BY,
    POLL_INTERVAL_S,
    PROCESSES_PER_INSTANCE,
    REAP_DEADLINE_S,
    REQUEST_TIMEOUT_S,
    Launch,
    Supervisor,
    assert_processes_gone,
    cgroup_unavailable,
    describe,
    instance_trees,
    ok_json,
    pool_tree,
    process_gone,
    sandbox_tier,
    sandbox_unavailable,
    serving_pid,
    supervisor_launcher,
    unavailable_here,
    wait_tagged,
)

pytestmark = pytest.mark.timeout(60)

# The deadline of the matrix's calls: every fault but the timeouts ends well before it (the
# memory faults included), and six timeouts per combination keep the module short.
TIMEOUT_S = 1.5
MEMORY_MB = 64
INSTANCES = 2
SPARES = 1
POOL_SIZE = INSTANCES + SPARES
TIMEOUT_BODY = {
    "errorMessage": "execution timeout exceeded",
    "errorType": "JobExecutionTimeoutExceeded",
    "stackTrace": None,
}
# A timed-out call answers within this long after its deadline.
DEADLINE_SLACK_S = 1.5
# The supervisor's peak resident memory may grow this much during one hostile call: less than
# the 50 MB line of `big_stdout`, which must never be held whole.
SUPERVISOR_GROWTH_BYTES = 25 * 1024 * 1024
# A surviving hostile instance must serve again within this many rounds of parallel calls.
SERVE_AGAIN_ROUNDS = 5
HOLD_S = 0.2
FIRST_GOOD_CALL_WAIT_S = 10.0
LINE_CUT_NOTE = re.compile(r" \[line cut: (\d+) more bytes dropped\]$")
MAX_LINE_BYTES = 64 * 1024
BOOT_FAILURE_LINE = re.compile(r"failed to initialize|initialization failing")
BOOT_OBSERVE_S = 2.0
MAX_BOOT_FAILURE_LINES = 20
HANG_TIMEOUT_S = 1
HANG_CALLS = 3


@dataclass(frozen=True)
class Fault:
    """A hostile behaviour (`?do=`) and what its call must get."""

    do: str
    status: int
    error_types: tuple[str, ...] = ()
    message: str = ""  # a part of the errorMessage
    kills_instance: bool = True
    spawns: int = 0  # processes the call starts, each tagged with the call's `?tag=`
    stdout_bytes: int = 0  # what the call writes to stdout, all cut into long lines


CRASHED = ("InstanceCrashed",)
BROKEN_PROTOCOL = ("WorkerProtocolError", "InstanceCrashed")
TIMED_OUT = ("JobExecutionTimeoutExceeded",)
OUT_OF_MEMORY = ("MemoryLimitExceeded",)
FAULTS = [
    Fault("raise", 502, ("HostileFailure",), "hostile function raised", kills_instance=False),
    Fault("exit", 502, CRASHED, "code 3"),
    Fault("os_exit", 502, CRASHED, "code 1"),
    Fault("sigkill", 502, CRASHED, "SIGKILL"),
    Fault("segfault", 502, CRASHED, "SIGSEGV"),
    Fault("loop", 504, TIMED_OUT),
    Fault("sleep", 504, TIMED_OUT),
    Fault("ignore_sigterm", 504, TIMED_OUT),
    Fault("memory_bomb", 502, OUT_OF_MEMORY, f"{MEMORY_MB} MB"),
    Fault("slow_leak", 502, OUT_OF_MEMORY, f"{MEMORY_MB} MB"),
    Fault("fork_bomb", 504, TIMED_OUT, spawns=50),
    Fault("daemon_loop", 504, TIMED_OUT, spawns=1),
    Fault("close_fds", 502, BROKEN_PROTOCOL),
    Fault("garbage", 502, BROKEN_PROTOCOL),
    Fault("big_stdout", 200, kills_instance=False, stdout_bytes=50_000_000),
    Fault("big_body", 502, ("ResponseTooLarge",), "3.5 MB", kills_instance=False),
    Fault("unserializable", 502, ("ProxyIntegrationError",), "not JSON-serializable",
          kills_instance=False),
    Fault("thread", 200, kills_instance=False),
]


# -- starting supervisors ----------------------------------------------------------------------


@dataclass(frozen=True)
class Isolation:
    """How a supervisor of the matrix bounds its instances: memory enforcement and sandbox."""

    enforcement: str  # --memory-enforcement: watchdog or cgroup
    sandbox: str  # --sandbox: ns, uid or none

    def __str__(self) -> str:
        return f"{self.enforcement}-{self.sandbox}"


# A cgroup under each tier that keeps a uid per instance, the watchdog under the strongest tier
# and under none (the functions' own uid, as before the sandbox).
ISOLATIONS = [Isolation("watchdog", "ns"), Isolation("cgroup", "ns"), Isolation("cgroup", "uid"),
              Isolation("watchdog", "none")]


@pytest.fixture(scope="module", params=ISOLATIONS, ids=str)
def isolation(request: pytest.FixtureRequest) -> Isolation:
    """The enforcement and sandbox of the module's supervisors; skipped where this machine
    cannot give them (a missing sandbox tier fails in CI instead)."""
    chosen: Isolation = request.param
    if chosen.enforcement == "cgroup" and (reason := cgroup_unavailable()):
        pytest.skip(f"--memory-enforcement cgroup cannot start here: {reason}")
    if reason := sandbox_unavailable(chosen.sandbox):
        unavailable_here(f"--sandbox {chosen.sandbox} cannot start here: {reason}")
    return chosen


def supervisor_options(isolation: Isolation, *extra: str,
                       timeout_s: float = TIMEOUT_S) -> list[str]:
    """The matrix's command-line options, then `extra`."""
    return [
        "--instances", str(INSTANCES), "--spares", str(SPARES), "--timeout", str(timeout_s),
        "--memory", str(MEMORY_MB), "--memory-enforcement", isolation.enforcement,
        "--sandbox", isolation.sandbox, "--log-format", "json", *extra,
    ]


def launch_hostile(launch: Launch, isolation: Isolation, *extra: str) -> Supervisor:
    """hostile.handler with the matrix's options; checks the enforcement and tier in force."""
    supervisor = launch("hostile.handler", *supervisor_options(isolation, *extra))
    assert ENFORCED_BY[isolation.enforcement] in supervisor.log_text(), supervisor.log_tail()
    assert sandbox_tier(supervisor) == isolation.sandbox, supervisor.log_tail()
    return supervisor


@pytest.fixture(scope="module")
def hostile(isolation: Isolation,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Supervisor]:
    """hostile.handler on 2 instances + 1 spare, shared by the matrix of one isolation."""
    with supervisor_launcher(tmp_path_factory.mktemp(f"hostile-{isolation}")) as launch:
        yield launch_hostile(launch, isolation)


# -- reading what happened -----------------------------------------------------------------------


def function_error(response: httpx.Response, status: int) -> dict[str, Any]:
    """Check the status and X-Function-Error of a failed call; return its JSON body."""
    assert response.status_code == status, f"{response.status_code}: {response.text[:2000]}"
    assert response.headers["X-Function-Error"] == "true"
    return response.json()


def assert_stdout_cut(supervisor: Supervisor, response: httpx.Response, written: int) -> None:
    """The call's stdout was logged in lines of at most 64 KiB, each cut one noting the rest."""
    request_id = response.headers["X-Request-Id"]
    records = supervisor.wait_for_reports([request_id])
    kept = dropped = cuts = 0
    for record in records:
        if record.get("request_id") == request_id and record.get("stream") == "stdout":
            line = str(record["message"])
            if note := LINE_CUT_NOTE.search(line):
                line = line[: note.start()]
                dropped += int(note.group(1))
                cuts += 1
            assert len(line) <= MAX_LINE_BYTES
            kept += len(line)
    assert cuts > 0, "no [line cut: ...] note"
    assert kept + dropped == written, f"{kept} bytes kept + {dropped} dropped != {written}"


def assert_only_workers_remain(supervisor: Supervisor) -> None:
    """Wait until the tree is just the pool: at most POOL_SIZE ready workers, each with only
    the processes its sandbox tier makes (see e2e_helpers.pool_tree), and nothing else.

    Strays (processes a hostile call left) are killed after a failed wait, so that one broken
    behaviour does not spill into the next test.
    """
    deadline = time.monotonic() + REAP_DEADLINE_S
    while True:
        tree = pool_tree(supervisor)
        if not tree.others and len(tree.workers) <= POOL_SIZE:
            return
        if time.monotonic() > deadline:
            workers = {pid: [describe(p) for p in chain] for pid, chain in tree.workers.items()}
            strays = [describe(process) for process in tree.others]
            for process in tree.others:
                with contextlib.suppress(psutil.Error):
                    process.kill()
            pytest.fail(f"the tree is not back to the pool: workers {workers}, strays {strays}",
                        pytrace=False)
        time.sleep(POLL_INTERVAL_S)


def assert_pool_bounded(supervisor: Supervisor) -> list[psutil.Process]:
    """At most POOL_SIZE instances below the supervisor, none with more processes than its
    sandbox tier makes; returns all their processes."""
    per_instance = PROCESSES_PER_INSTANCE[sandbox_tier(supervisor)]
    trees = instance_trees(supervisor)
    processes = [process for child, below in trees.items() for process in [child, *below]]
    described = [describe(process) for process in processes]
    assert len(trees) <= POOL_SIZE, described
    assert all(len(below) < per_instance for below in trees.values()), described
    return processes


# -- the supervisor's own memory -----------------------------------------------------------------


def reset_peak_rss(pid: int) -> None:
    """Reset a process's VmHWM to its current RSS (`5` to /proc/PID/clear_refs)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def peak_rss_bytes(pid: int) -> int:
    """A process's VmHWM in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {pid}")


# -- well-behaved calls in parallel --------------------------------------------------------------


class GoodCalls:
    """`?do=ok` calls, one after another from a thread, while the `with` block runs.

    Entering waits for the first of them to finish; every one must get 200. The thread also
    notes the supervisor's descendants, so processes a hostile call starts are tracked too.
    """

    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor
        self._stop = threading.Event()
        self._first_done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.count = 0
        self.failures: list[str] = []

    def __enter__(self) -> GoodCalls:
        self._thread.start()
        assert self._first_done.wait(FIRST_GOOD_CALL_WAIT_S), "the first good call never ended"
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        base_url = f"http://127.0.0.1:{self._supervisor.port}"
        with httpx.Client(base_url=base_url, timeout=REQUEST_TIMEOUT_S, trust_env=False) as client:
            while not self._stop.is_set():
                self._call(client)
                self._supervisor.track_descendants()
                self._first_done.set()

    def _call(self, client: httpx.Client) -> None:
        self.count += 1
        try:
            response = client.get("/", params={"do": "ok"})
        except httpx.HTTPError as exc:
            self.failures.append(repr(exc))
            return
        if response.status_code != 200:
            self.failures.append(f"{response.status_code}: {response.text}")


# -- the matrix ----------------------------------------------------------------------------------


def assert_hostile_answer(response: httpx.Response, fault: Fault, elapsed_s: float) -> None:
    """The hostile call got its status and a clear error of the right type."""
    if fault.status == 200:
        ok_json(response)
        return
    error = function_error(response, fault.status)
    if fault.status == 504:
        assert error == TIMEOUT_BODY
        assert TIMEOUT_S - 0.1 < elapsed_s < TIMEOUT_S + DEADLINE_SLACK_S, f"{elapsed_s:.2f} s"
        return
    assert error["errorType"] in fault.error_types, error
    assert isinstance(error["errorMessage"], str) and error["errorMessage"], error
    assert fault.message in error["errorMessage"], error
    if error["errorType"] == "HostileFailure":
        assert all(isinstance(frame, str) for frame in error["stackTrace"]), error
        assert any("hostile.py" in frame for frame in error["stackTrace"]), error


def parallel_call_pids(supervisor: Supervisor) -> list[int]:
    """The worker pids serving INSTANCES `?do=ok` calls sent at once, each holding its
    instance (read from the log, see e2e_helpers.serving_pid)."""
    url = f"http://127.0.0.1:{supervisor.port}/"

    def call(_: int) -> httpx.Response:
        response = httpx.get(url, params={"do": "ok", "hold": HOLD_S},
                             timeout=REQUEST_TIMEOUT_S, trust_env=False)
        ok_json(response)
        return response

    with ThreadPoolExecutor(INSTANCES) as executor:
        responses = list(executor.map(call, range(INSTANCES)))
    return [serving_pid(supervisor, response) for response in responses]


def assert_next_call_works(supervisor: Supervisor, fault: Fault, hostile_pid: int) -> None:
    """Calls after the hostile one succeed, on a fresh instance if the hostile one was killed.

    An instance that survived its hostile call must serve again: parallel calls that hold their
    instances are sent until one lands on it.
    """
    if fault.kills_instance:
        response = supervisor.request("GET", "/", params={"do": "ok"})
        ok_json(response)
        assert serving_pid(supervisor, response) != hostile_pid
        assert process_gone(hostile_pid), f"the hostile instance {hostile_pid} still runs"
        return
    served = []
    for _ in range(SERVE_AGAIN_ROUNDS):
        served += parallel_call_pids(supervisor)
        if hostile_pid in served:
            return
    pytest.fail(f"instance {hostile_pid} served none of the next calls ({served})")


def call_hostile(supervisor: Supervisor, fault: Fault,
                 tag: str) -> tuple[httpx.Response, float, list[psutil.Process]]:
    """Make the hostile call; its response, how long it took, and the processes it started
    (each seen running on the host while the call went on)."""
    with ThreadPoolExecutor(1) as caller:
        started = time.monotonic()
        call = caller.submit(supervisor.request, "GET", "/", params={"do": fault.do, "tag": tag})
        spawned = wait_tagged(tag, fault.spawns, TIMEOUT_S) if fault.spawns else []
        response = call.result()
        elapsed_s = time.monotonic() - started
    return response, elapsed_s, spawned


@pytest.mark.parametrize("fault", FAULTS, ids=[fault.do for fault in FAULTS])
def test_hostile_call_fails_alone(hostile: Supervisor, fault: Fault) -> None:
    tag = f"hostile-{uuid.uuid4().hex}"
    rss_before = psutil.Process(hostile.pid).memory_info().rss
    reset_peak_rss(hostile.pid)
    with GoodCalls(hostile) as good:
        response, elapsed_s, spawned = call_hostile(hostile, fault, tag)
    assert_hostile_answer(response, fault, elapsed_s)
    assert not good.failures, f"{len(good.failures)} of {good.count}: {good.failures[:5]}"
    assert good.count >= 2
    growth = peak_rss_bytes(hostile.pid) - rss_before
    assert growth < SUPERVISOR_GROWTH_BYTES, f"the supervisor grew by {growth} bytes"
    if fault.stdout_bytes:
        assert_stdout_cut(hostile, response, fault.stdout_bytes)
    assert_next_call_works(hostile, fault, serving_pid(hostile, response))
    assert len(spawned) == fault.spawns
    assert_processes_gone(spawned)
    assert_only_workers_remain(hostile)


# -- daemons, and entry modules that do not import ----------------------------------------------


def test_daemon_of_a_returning_call_dies_with_its_instance(
    launch_supervisor: Launch, isolation: Isolation
) -> None:
    # One instance and no spare: the next call runs on the instance that started the daemon.
    supervisor = launch_hostile(launch_supervisor, isolation, "--instances", "1", "--spares", "0")
    first, second = (f"daemon-{uuid.uuid4().hex}" for _ in range(2))
    ok_json(supervisor.request("GET", "/", params={"do": "daemon_return", "tag": first}))
    first_daemon = wait_tagged(first, 1, REAP_DEADLINE_S)
    timeout = supervisor.request("GET", "/", params={"do": "loop"})
    assert function_error(timeout, 504) == TIMEOUT_BODY
    assert_processes_gone(first_daemon)
    ok_json(supervisor.request("GET", "/", params={"do": "daemon_return", "tag": second}))
    second_daemon = wait_tagged(second, 1, REAP_DEADLINE_S)
    problems = supervisor.stop()
    assert not problems, "\n".join(problems)
    assert_processes_gone(second_daemon)


def test_import_that_raises_fails_every_call_without_spinning(
    launch_supervisor: Launch, isolation: Isolation
) -> None:
    supervisor = launch_supervisor("hostile_import_raises.handler",
                                   *supervisor_options(isolation), wait_instances=False)
    deadline = time.monotonic() + BOOT_OBSERVE_S
    while time.monotonic() < deadline:
        error = function_error(supervisor.request("GET", "/"), 502)
        assert error["errorType"] == "HostileImportError", error
        assert_pool_bounded(supervisor)
        time.sleep(POLL_INTERVAL_S)
    boot_failure_lines = BOOT_FAILURE_LINE.findall(supervisor.log_text())
    assert 0 < len(boot_failure_lines) < MAX_BOOT_FAILURE_LINES, supervisor.log_tail()


def test_import_that_hangs_times_out_and_its_workers_are_killed(
    launch_supervisor: Launch, isolation: Isolation
) -> None:
    supervisor = launch_supervisor(
        "hostile_import_hangs.handler",
        *supervisor_options(isolation, timeout_s=HANG_TIMEOUT_S),
        wait_instances=False,
    )
    seen: set[psutil.Process] = set()
    for _ in range(HANG_CALLS):
        started = time.monotonic()
        response = supervisor.request("GET", "/")
        elapsed_s = time.monotonic() - started
        assert function_error(response, 504) == TIMEOUT_BODY
        # A call waits at most for one instance's import: the first call's timeout includes it.
        assert elapsed_s < HANG_TIMEOUT_S + DEADLINE_SLACK_S, f"answered after {elapsed_s:.2f} s"
        seen.update(assert_pool_bounded(supervisor))
    # Each hanging worker is killed at its own init deadline, not only when the server stops.
    assert_processes_gone(seen, HANG_TIMEOUT_S + DEADLINE_SLACK_S)
