"""End to end: nothing takes the server down — host faults, signals, and odd function behaviour.

A stalled or failing log destination, a shortage of file descriptors, a code root that vanished,
operator signals, async calls beyond the queue, a forked child answering twice, an exception that
cannot be printed, big queued uploads, and a SIGKILLed supervisor: each costs at most the call
that caused it, and the server goes on (or, killed, leaves nothing behind).
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import signal
import sys
import termios
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest
from e2e_helpers import (
    FUNCTIONS_DIR,
    PYTHON_M_SUPERVISOR,
    Launch,
    Supervisor,
    assert_processes_gone,
    assert_refusal,
    cgroup_unavailable,
    ok_json,
    scrape_metrics,
    tagged_processes,
    wait_busy,
    wait_queued,
    wait_tagged,
)

pytestmark = pytest.mark.timeout(60)

FUNCTION = "resilience.handler"
DROPPED = "sfsupervisor_log_dropped_lines_total"
# Enough calls to write more log than a pipe (64 KiB) and the supervisor's buffer (1 MiB) hold.
LOGGED_CALLS = 600
LINE_PAD = 4000
PIPE_BYTES = 65536
READ_DEADLINE_S = 15.0
IDLE_MEASURE_S = 2.0
# The CPU an idle supervisor may use in IDLE_MEASURE_S (a spinning one uses all of it).
IDLE_CPU_S = 0.3
RECOVERY_DEADLINE_S = 20.0
FD_LIMIT = 256
HELD_CONNECTIONS = 700
SPAWN_FAILED = "could not start a worker"
# How long the call in flight across a reload runs.
IN_FLIGHT_S = 1.5
CRASHES = 5


def get(supervisor: Supervisor, **params: str | float) -> httpx.Response:
    return supervisor.request("GET", "/", params=params)


def wait_ready(supervisor: Supervisor) -> None:
    supervisor.wait_until(lambda: supervisor.request("GET", "/readyz").status_code == 200,
                          "/readyz 200", timeout_s=20)


# -- the log destination -----------------------------------------------------------------------


def test_a_stalled_log_reader_blocks_nothing(launch_supervisor: Launch) -> None:
    read_end, write_end = os.pipe()
    try:
        supervisor = launch_supervisor(FUNCTION, "--instances", "2", wait_instances=False,
                                       stderr=write_end)
    finally:
        os.close(write_end)
    try:
        wait_ready(supervisor)
        started = time.monotonic()
        for _ in range(LOGGED_CALLS):
            assert get(supervisor, pad=LINE_PAD).status_code == 200
        assert supervisor.request("GET", "/healthz").status_code == 200
        assert time.monotonic() - started < 30
        assert _unread_bytes(read_end) > 0  # nobody read: what went past the pipe was dropped
        assert scrape_metrics(supervisor).value(DROPPED) > 0
        # Once the reader reads again, the log resumes with one line saying what was lost.
        log = _read_until(read_end, b"log line(s)", lambda: get(supervisor))
        assert b"were dropped" in log
    finally:
        os.close(read_end)


def _unread_bytes(fd: int) -> int:
    waiting = bytearray(4)
    fcntl.ioctl(fd, termios.FIONREAD, waiting)
    return int.from_bytes(waiting, sys.byteorder)


def _read_until(fd: int, marker: bytes, nudge: object) -> bytes:
    """Read the pipe until `marker` shows up, calling `nudge()` now and then to make log."""
    seen = bytearray()
    deadline = time.monotonic() + READ_DEADLINE_S
    while marker not in seen:
        assert time.monotonic() < deadline, f"no {marker!r} in the log: {bytes(seen[-2000:])!r}"
        if select.select([fd], [], [], 0.1)[0]:
            seen += os.read(fd, PIPE_BYTES)
        else:
            nudge()  # type: ignore[operator]
    return bytes(seen)


def test_a_failing_log_destination_costs_nothing(launch_supervisor: Launch) -> None:
    with open("/dev/full", "wb") as full:
        supervisor = launch_supervisor(FUNCTION, "--instances", "2", wait_instances=False,
                                       stderr=full.fileno())
    wait_ready(supervisor)
    for _ in range(50):
        assert get(supervisor).status_code == 200
    process = psutil.Process(supervisor.pid)
    before = sum(process.cpu_times()[:2])
    time.sleep(IDLE_MEASURE_S)  # measuring idle CPU: the interval is the point
    used_s = sum(process.cpu_times()[:2]) - before
    assert used_s < IDLE_CPU_S, f"the idle supervisor used {used_s:.2f} s of CPU"
    assert scrape_metrics(supervisor).value(DROPPED) > 0
    # The launcher's stop() checks that SIGTERM still ends it with exit code 0.


# -- starting workers fails --------------------------------------------------------------------


def readable_code_root(shared_dir: Path) -> Path:
    """A fresh code root that the sandbox uids can read (not under tmp_path, which is 0700:
    the supervisor would fall back to --sandbox none), so that the default tier runs it."""
    code_root = shared_dir / "function"
    code_root.mkdir(mode=0o755)
    code_root.chmod(0o755)  # whatever the umask
    return code_root


def test_an_fd_shortage_while_instances_crash_does_not_end_serving(
    launch_supervisor: Launch, background: ThreadPoolExecutor
) -> None:
    supervisor = launch_supervisor(
        FUNCTION, "--instances", "2", "--spares", "0",
        command=("prlimit", f"--nofile={FD_LIMIT}:{FD_LIMIT}", *PYTHON_M_SUPERVISOR))
    process = psutil.Process(supervisor.pid)
    baseline_fds = process.num_fds()
    crashes = [background.submit(get, supervisor, do="crash", seconds=1) for _ in range(2)]
    wait_busy(supervisor, 2)
    held = _hold_connections(supervisor.port, HELD_CONNECTIONS)
    try:
        supervisor.wait_for_text(SPAWN_FAILED)
    finally:
        for connection in held:
            connection.close()
    for crash in crashes:
        assert crash.result().json()["errorType"] == "InstanceCrashed"
    supervisor.wait_until(lambda: get(supervisor).status_code == 200, "a call served again",
                          timeout_s=RECOVERY_DEADLINE_S)
    wait_ready(supervisor)
    assert process.num_fds() <= baseline_fds + 4, "descriptors leaked by the failed starts"


def _hold_connections(port: int, count: int) -> list[object]:
    import socket

    held = []
    for _ in range(count):
        try:
            held.append(socket.create_connection(("127.0.0.1", port), timeout=2))
        except OSError:
            break
    return held


def test_failed_starts_leak_nothing_and_turn_health_red_until_they_work(
    launch_supervisor: Launch, shared_dir: Path
) -> None:
    code_root = readable_code_root(shared_dir)
    for name in ("resilience.py", "instance_id.py"):
        shutil.copy(FUNCTIONS_DIR / name, code_root / name)
    supervisor = launch_supervisor(FUNCTION, "--instances", "1", "--spares", "0",
                                   "--unhealthy-after", "1", code_root=code_root)
    process = psutil.Process(supervisor.pid)
    moved = shared_dir / "moved-away"
    code_root.rename(moved)
    assert get(supervisor, do="crash").json()["errorType"] == "InstanceCrashed"
    supervisor.wait_until(lambda: supervisor.log_text().count(SPAWN_FAILED) >= 2,
                          "two failed starts")
    fds_after_two = process.num_fds()
    supervisor.wait_until(lambda: supervisor.log_text().count(SPAWN_FAILED) >= 4,
                          "four failed starts")
    assert process.num_fds() <= fds_after_two, "each failed start leaked descriptors"
    supervisor.wait_until(lambda: supervisor.request("GET", "/healthz").status_code == 503,
                          "/healthz 503")
    assert supervisor.request("GET", "/readyz").status_code == 503
    moved.rename(code_root)
    supervisor.wait_until(lambda: get(supervisor).status_code == 200, "a call served again",
                          timeout_s=RECOVERY_DEADLINE_S)
    assert supervisor.request("GET", "/healthz").status_code == 200


# -- signals -----------------------------------------------------------------------------------


def test_sighup_reloads_the_code_with_no_call_failing(
    launch_supervisor: Launch, shared_dir: Path
) -> None:
    code_root = readable_code_root(shared_dir)
    write_versioned(code_root, "one")
    supervisor = launch_supervisor("index.handler", "--instances", "2", code_root=code_root)
    statuses: list[int] = []
    versions: list[str] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            response = supervisor.request("GET", "/", params={"seconds": 0.02})
            statuses.append(response.status_code)
            if response.status_code == 200:
                versions.append(response.json()["version"])

    with ThreadPoolExecutor(5) as pool:
        loaders = [pool.submit(load) for _ in range(4)]
        supervisor.wait_until(lambda: len(versions) > 20, "steady load")
        # A long call, running on an instance of the old code when the reload comes: the SIGHUP
        # is sent once the call has printed that it started.
        started = f"in-flight-{time.monotonic_ns()}"
        in_flight = pool.submit(supervisor.request, "GET", "/",
                                params={"seconds": IN_FLIGHT_S, "say": started})
        supervisor.wait_for_text(started)
        write_versioned(code_root, "two")
        supervisor.send_signal_alive(signal.SIGHUP)
        supervisor.wait_until(lambda: versions[-8:] == ["two"] * 8, "the new code serving")
        stop.set()
        for loader in loaders:
            loader.result()
        finished = in_flight.result()
        assert ok_json(finished)["version"] == "one"
    assert set(statuses) == {200}, f"{len(statuses)} calls: {sorted(set(statuses))}"
    in_flight_end_line = f"END RequestID: {finished.headers['X-Request-Id']}"
    supervisor.wait_for_text(in_flight_end_line)  # log lines follow the answer within ms
    log = supervisor.log_text()
    assert "SIGHUP: replacing" in log
    # The long call ended after the reload began: it was in flight all along.
    in_flight_end = log.index(in_flight_end_line)
    assert log.index("SIGHUP: replacing") < in_flight_end


def write_versioned(code_root: Path, version: str) -> None:
    """index.py answering {"version": version}, after printing `?say=` and sleeping
    `?seconds=` if given."""
    (code_root / "index.py").write_text(
        "import json, time\n"
        f"VERSION = {version!r}\n"
        "def handler(event, context):\n"
        "    query = event['queryStringParameters']\n"
        "    if 'say' in query:\n"
        "        print(query['say'], flush=True)\n"
        "    time.sleep(float(query.get('seconds', 0)))\n"
        "    return {'statusCode': 200, 'body': json.dumps({'version': VERSION})}\n")


def test_sigusr1_and_sigusr2_log_the_state_and_stop_nothing(
    launch_supervisor: Launch, background: ThreadPoolExecutor
) -> None:
    supervisor = launch_supervisor(FUNCTION, "--instances", "2")
    in_flight = background.submit(get, supervisor, seconds=1)
    wait_busy(supervisor, 1)
    for sent in (signal.SIGUSR1, signal.SIGUSR2):
        supervisor.send_signal_alive(sent)
        supervisor.wait_for_text(f"{sent.name}: instances:")
    assert in_flight.result().status_code == 200
    assert get(supervisor).status_code == 200


# -- admission ---------------------------------------------------------------------------------


def test_async_calls_get_429_when_they_cannot_be_queued_and_run_when_accepted(
    launch_supervisor: Launch,
) -> None:
    supervisor = launch_supervisor(FUNCTION, "--instances", "1", "--spares", "0",
                                   "--max-queue", "2", "--timeout", "1")
    statuses = {}
    for number in range(6):
        body = json.dumps({"seconds": 0.6, "say": f"async-call-{number}-ran"})
        response = supervisor.request("POST", "/", params={"integration": "async"}, content=body)
        statuses[number] = response.status_code
        if response.status_code == 429:
            assert_refusal(response, 429, "TooManyRequests", "--max-queue 2")
    accepted = [number for number, status in statuses.items() if status == 202]
    assert sorted(statuses.values()) == [202, 202, 202, 429, 429, 429], statuses
    # The last accepted call waits ~1.2 s for the instance, past the 1 s timeout: it still runs.
    for number in accepted:
        supervisor.wait_for_text(f"async-call-{number}-ran")
    refused = set(statuses) - set(accepted)
    assert not any(f"async-call-{number}-ran" in supervisor.log_text() for number in refused)


def test_queued_request_bodies_are_bounded(
    launch_supervisor: Launch, background: ThreadPoolExecutor
) -> None:
    supervisor = launch_supervisor(FUNCTION, "--instances", "1", "--spares", "0",
                                   "--max-queue-mb", "5", "--timeout", "10")
    holder = background.submit(get, supervisor, seconds=1.5)
    wait_busy(supervisor, 1)
    upload = b"u" * (2 * 1024 * 1024)  # two wait within the 5 MB, a third would pass it

    def post() -> httpx.Response:
        return supervisor.request("POST", "/", content=upload,
                                  headers={"Content-Type": "application/octet-stream"})

    queued = [background.submit(post) for _ in range(2)]
    wait_queued(supervisor, 2)
    assert_refusal(post(), 429, "TooManyRequests", "--max-queue-mb 5")
    assert holder.result().status_code == 200
    assert [future.result().status_code for future in queued] == [200, 200]


# -- what functions do -------------------------------------------------------------------------


def test_a_forked_child_returning_fails_no_other_call(launch_supervisor: Launch) -> None:
    supervisor = launch_supervisor(FUNCTION, "--instances", "1", "--spares", "0")
    forked = ok_json(get(supervisor, do="fork_return"))
    innocent = ok_json(get(supervisor, seconds=0.5))
    assert innocent["identity"] == forked["identity"]
    assert all(get(supervisor).status_code == 200 for _ in range(5))


def test_a_stray_reply_fails_no_call_and_the_instance_is_replaced(
    launch_supervisor: Launch,
) -> None:
    supervisor = launch_supervisor(FUNCTION, "--instances", "1", "--spares", "0")
    stray = ok_json(get(supervisor, do="stray_reply"))
    innocent = ok_json(get(supervisor, seconds=0.5))  # the stray frame arrives meanwhile
    assert innocent["identity"] == stray["identity"]
    supervisor.wait_for_text("answered call 1 again")
    supervisor.wait_until(lambda: ok_json(get(supervisor))["identity"] != stray["identity"],
                          "a fresh instance serving")


def test_an_exception_whose_str_raises_is_an_ordinary_error(launch_supervisor: Launch) -> None:
    supervisor = launch_supervisor(FUNCTION, "--instances", "1", "--spares", "0")
    before = ok_json(get(supervisor))["identity"]
    response = get(supervisor, do="bad_str")
    assert response.status_code == 502
    assert response.headers["X-Function-Error"] == "true"
    error = response.json()
    assert error["errorType"] == "BadStrError"
    assert error["errorMessage"] == "<exception str() failed>"
    assert any("raise BadStrError" in line for line in error["stackTrace"])
    assert ok_json(get(supervisor))["identity"] == before


# -- a killed supervisor -----------------------------------------------------------------------


def test_nothing_of_an_instance_outlives_a_sigkilled_supervisor(
    launch_supervisor: Launch,
) -> None:
    if reason := cgroup_unavailable():
        pytest.skip(f"no cgroup here to make it exact: {reason}")
    supervisor = launch_supervisor(FUNCTION, "--instances", "2", "--memory-enforcement",
                                   "cgroup")
    tag = f"detached-{os.getpid()}-{time.monotonic_ns()}"
    assert get(supervisor, do="detach", tag=tag).status_code == 200
    detached = wait_tagged(tag, 1, timeout_s=10)
    supervisor.send_signal(signal.SIGKILL)
    assert supervisor.wait_exit(10) == -signal.SIGKILL
    assert_processes_gone(detached, timeout_s=10)


def test_the_cgroups_of_replaced_instances_are_removed_while_serving(
    launch_supervisor: Launch,
) -> None:
    # They are removed off the loop (removing one takes the kernel milliseconds): this checks
    # that they still are, during the run, and that none is left once the server has stopped.
    if reason := cgroup_unavailable():
        pytest.skip(f"--memory-enforcement cgroup cannot start here: {reason}")
    supervisor = launch_supervisor(FUNCTION, "--instances", "1", "--spares", "0",
                                   "--memory-enforcement", "cgroup")
    parents = _own_cgroups(supervisor.pid)
    assert parents, "the supervisor made no cgroup directory"
    for _ in range(CRASHES):
        assert get(supervisor, do="crash").status_code == 502
        wait_ready(supervisor)
    supervisor.wait_until(lambda: all(len(_instance_cgroups(parent)) == 1 for parent in parents),
                          "only the live instance's cgroups left")
    supervisor.stop()
    assert not [parent for parent in parents if parent.exists()]


def _own_cgroups(pid: int) -> list[Path]:
    """The directories a supervisor makes for its instances' cgroups (v1: one per controller)."""
    found = []
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        mounts = [f"/sys/fs/cgroup/{controller}" for controller in controllers.split(",")
                  if controller] or ["/sys/fs/cgroup"]
        found += [Path(mount + path.rstrip("/")) / f"sfsupervisor-{pid}" for mount in mounts]
    return sorted({directory for directory in found if directory.is_dir()})


def _instance_cgroups(parent: Path) -> list[Path]:
    return [child for child in parent.iterdir() if child.is_dir()]


def test_daemons_that_end_on_their_own_are_reaped(launch_supervisor: Launch) -> None:
    # Outside a PID namespace a detached daemon is re-parented to the supervisor (a child
    # subreaper); the uid tier shows that.
    supervisor = launch_supervisor(FUNCTION, "--instances", "1", "--sandbox", "uid")
    tag = f"short-daemon-{os.getpid()}-{time.monotonic_ns()}"
    for _ in range(5):
        assert get(supervisor, do="orphan", tag=tag, seconds=1).status_code == 200
    wait_tagged(tag, 5, timeout_s=10)
    supervisor.wait_until(lambda: not tagged_processes(tag), "the daemons ended")
    supervisor.wait_until(lambda: not _zombie_children(supervisor.pid), "no zombie left")


def _zombie_children(pid: int) -> list[int]:
    zombies = []
    for child in psutil.Process(pid).children():
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                zombies.append(child.pid)
        except psutil.NoSuchProcess:
            pass  # reaped between the listing and the look: what the test waits for
    return zombies
