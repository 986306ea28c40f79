"""Start, call, read the log of and stop the real `sfsupervisor` command (end-to-end tests).

What a function reports of itself is only good for comparing instances (its `identity`, see
functions/instance_id.py): in the `ns` sandbox tier its pid is one of its own PID namespace, and
what it starts runs as another uid. So the host's view of an instance comes from the supervisor:
a call's START line names its instance, and the instance's `ready (pid P, ...)` line gives the
pid of the process the supervisor started (`ready_pids`, `serving_pid`). That process is the
supervisor's child in every tier; in the `ns` tier it is the keeper outside the namespaces, with
the namespace's init below it and the serving process below that (`pool_tree`). Processes a
function starts are found by a tag on their command line (`tagged_processes`).
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

FUNCTIONS_DIR = (Path(__file__).parent / "functions").resolve()
PYTHON_M_SUPERVISOR = (sys.executable, "-m", "supervisor")
READY_MARKER = "instances ready"
START_DEADLINE_S = 20.0
LOG_DEADLINE_S = 10.0
STOP_DEADLINE_S = 10.0
REAP_DEADLINE_S = 5.0
REQUEST_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.02
LOG_TAIL_LINES = 40
RUNTIME_LINE_KINDS = ("START", "END", "ERROR", "REPORT")
ENFORCED_BY = {"watchdog": "enforced by watchdog", "cgroup": "enforced by cgroup v"}
NO_CGROUP = "no writable memory cgroup"
SERVING = " serving "  # the startup line, which says how the memory limit is enforced
REPORTED_REQUEST_ID = re.compile(r"REPORT RequestID: (\S+)")
READY_LINE = re.compile(r"instance (\d+) ready \(pid (\d+),")
# The startup line (`serving ENTRY from DIR on URL with ..., sandbox TIER (...)`) and its tier.
STARTUP_TIER = re.compile(r"\bserving \S+ from .* on http.*, sandbox (ns|uid|none)\b")
SANDBOX_ERROR = "sfsupervisor: error:"
# The processes of one instance, in a chain from the supervisor's child down: in `ns` the keeper,
# the namespace's init and the serving process; otherwise the serving process alone.
PROCESSES_PER_INSTANCE = {"ns": 3, "uid": 1, "none": 1}
# Where the tests share files with functions: not /tmp, which is private to an instance in `ns`.
SHARED_DIR_PARENT = Path("/var/tmp")

T = TypeVar("T")


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def complete_lines(text: str) -> list[str]:
    """The lines of `text` that end with a newline (a log's last line may still be written)."""
    return text[: text.rfind("\n") + 1].splitlines()


def json_log_records(text: str) -> list[dict[str, Any]]:
    """Parse the complete lines of a JSON log, skipping any line that is not a JSON object."""
    records = []
    for line in complete_lines(text):
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                records.append(record)
    return records


def runtime_line_kind(record: dict[str, Any], request_id: str) -> str | None:
    """START/END/ERROR/REPORT if `record` is that runtime line of the call, else None."""
    message = str(record.get("message", ""))
    for kind in RUNTIME_LINE_KINDS:
        prefix = f"{kind} RequestID: {request_id}"
        if message == prefix or message.startswith(prefix + " "):
            return kind
    return None


def runtime_lines(records: list[dict[str, Any]], request_id: str) -> list[tuple[int, dict]]:
    """(log index, record) of every START/END/ERROR/REPORT line of one call, in log order."""
    return [
        (index, record)
        for index, record in enumerate(records)
        if runtime_line_kind(record, request_id) is not None
    ]


def runtime_line_sequence(records: list[dict[str, Any]], request_id: str) -> list[str]:
    """The kinds of one call's runtime lines in log order, e.g. ['START', 'END', 'REPORT']."""
    lines = runtime_lines(records, request_id)
    return [str(runtime_line_kind(record, request_id)) for _, record in lines]


def only_runtime_line(
    records: list[dict[str, Any]], kind: str, request_id: str
) -> tuple[int, dict[str, Any]]:
    """(log index, record) of the single `kind` line of a call; fails unless there is one."""
    found = [
        (index, record)
        for index, record in runtime_lines(records, request_id)
        if runtime_line_kind(record, request_id) == kind
    ]
    assert len(found) == 1, f"{len(found)} {kind} lines for {request_id}: {found}"
    return found[0]


def reported_request_ids(records: Iterable[dict[str, Any]]) -> set[str]:
    """Request ids that already have a REPORT line."""
    matches = (REPORTED_REQUEST_ID.match(str(record.get("message", ""))) for record in records)
    return {match.group(1) for match in matches if match}


def ok_json(response: httpx.Response) -> Any:
    """The JSON body of a 200 response; fails showing the status and body otherwise."""
    assert response.status_code == 200, f"{response.status_code}: {response.text}"
    return response.json()


def is_alive(process: psutil.Process) -> bool:
    """Whether the process still runs (a zombie has finished and counts as gone)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def is_guard(process: psutil.Process) -> bool:
    """Whether the process is the supervisor's guard (which outlives it to clean up after it)."""
    try:
        return "supervisor.guard" in process.cmdline()
    except psutil.Error:
        return False


def process_gone(pid: int, timeout_s: float = REAP_DEADLINE_S) -> bool:
    """Wait up to `timeout_s` for the process `pid` to finish; return whether it did."""
    try:
        process = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return True
    deadline = time.monotonic() + timeout_s
    while is_alive(process):
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_INTERVAL_S)
    return True


def live_children(process: psutil.Process) -> list[psutil.Process]:
    """The process's children that still run (none once it is gone)."""
    try:
        return [child for child in process.children() if is_alive(child)]
    except psutil.NoSuchProcess:
        return []


def live_descendants_of(process: psutil.Process) -> list[psutil.Process]:
    """The process's descendants that still run (none once it is gone)."""
    try:
        return [child for child in process.children(recursive=True) if is_alive(child)]
    except psutil.NoSuchProcess:
        return []


def describe(process: psutil.Process) -> str:
    """A pid with its command line, for failure messages."""
    try:
        return f"{process.pid} {process.cmdline()}"
    except psutil.Error:
        return str(process.pid)


def tagged_processes(tag: str) -> list[psutil.Process]:
    """The running processes with `tag` on their command line, anywhere on the host.

    Test functions put a tag (their argv[0], say) on the processes they start: a pid they could
    report is one of their PID namespace in the `ns` tier, and files they could write them to
    are out of reach of their uid.
    """
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        if tag in (process.info["cmdline"] or []) and \
                process.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(process)
    return found


def wait_tagged(tag: str, count: int, timeout_s: float) -> list[psutil.Process]:
    """Wait until `count` processes tagged `tag` have been seen running; all of them seen.

    They need not run at the same time: a process seen once is kept, so that the caller can
    check later that every one of them is gone.
    """
    seen: set[psutil.Process] = set()
    deadline = time.monotonic() + timeout_s
    while len(seen) < count:
        if time.monotonic() > deadline:
            pytest.fail(f"{len(seen)} of {count} processes tagged {tag} seen in {timeout_s} s",
                        pytrace=False)
        seen.update(tagged_processes(tag))
        time.sleep(POLL_INTERVAL_S)
    return sorted(seen, key=lambda process: process.pid)


def assert_processes_gone(processes: Iterable[psutil.Process],
                          timeout_s: float = REAP_DEADLINE_S) -> None:
    """Every one of `processes` finishes within `timeout_s` (those left are then killed)."""
    deadline = time.monotonic() + timeout_s
    while left := [process for process in processes if is_alive(process)]:
        if time.monotonic() > deadline:
            described = [describe(process) for process in left]
            for process in left:
                with contextlib.suppress(psutil.Error):
                    process.kill()
            pytest.fail(f"still running after {timeout_s} s: {described}", pytrace=False)
        time.sleep(POLL_INTERVAL_S)


@contextlib.contextmanager
def shared_directory() -> Iterator[Path]:
    """A directory that the tests and every function share, removed on exit.

    Outside /tmp and /dev/shm (private to each instance in the `ns` tier) and writable by all
    (functions run as a uid of their own in the `ns` and `uid` tiers), with the sticky bit.
    """
    directory = Path(tempfile.mkdtemp(prefix="sfsupervisor-tests-", dir=SHARED_DIR_PARENT))
    try:
        directory.chmod(0o1777)
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def shared_file(directory: Path, name: str) -> Path:
    """An empty file in a `shared_directory` that any function's uid may append to."""
    path = directory / name
    path.touch()
    path.chmod(0o666)
    return path


def unavailable_here(what: str) -> NoReturn:
    """What this machine cannot do skips the test, but fails it in CI (CI must provide it)."""
    if os.environ.get("CI"):
        pytest.fail(f"{what}; CI must run this test", pytrace=False)
    pytest.skip(what)


@dataclass(frozen=True)
class RawExchange:
    """One HTTP exchange sent with http.client, with exactly the headers given."""

    status: int
    headers: http.client.HTTPMessage
    body: bytes
    client_port: int


class Supervisor:
    """A running sfsupervisor: its process, log files, an HTTP client and its descendants."""

    def __init__(
        self, argv: list[str], env: dict[str, str], port: int, log_dir: Path, name: str,
        stderr: int | None = None,
    ) -> None:
        self.argv = argv
        # Where stderr goes instead of the log file (log_text() is then empty).
        self.stderr = stderr
        self.env = env
        self.port = port
        self.log_path = log_dir / f"{name}.stderr.log"
        self.stdout_path = log_dir / f"{name}.stdout.log"
        self.client = httpx.Client(
            base_url=f"http://127.0.0.1:{port}", timeout=REQUEST_TIMEOUT_S, trust_env=False
        )
        self.descendants: set[psutil.Process] = set()
        self._descendants_lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._stopped = False
        self._signalled: signal.Signals | None = None

    @property
    def pid(self) -> int:
        """The supervisor's own pid."""
        assert self._process is not None
        return self._process.pid

    @property
    def json_log(self) -> bool:
        """Whether it logs JSON lines (--log-format json) rather than text."""
        return any(self.argv[index:index + 2] == ["--log-format", "json"]
                   for index in range(len(self.argv)))

    def start(self, wait_instances: bool) -> None:
        """Start the command; wait for its port and, if asked, for the `instances ready` line."""
        with self.log_path.open("wb") as log_file, self.stdout_path.open("wb") as stdout_file:
            self._process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=stdout_file,
                stderr=log_file if self.stderr is None else self.stderr,
                env=self.env,
                cwd=self.log_path.parent,
            )
        deadline = time.monotonic() + START_DEADLINE_S
        self._poll(self._accepts_connections, "port accepting connections", deadline)
        if wait_instances:
            self._poll(lambda: READY_MARKER in self.log_text(), repr(READY_MARKER), deadline)
        self.track_descendants()

    def track_descendants(self) -> None:
        """Remember every current descendant, so that stop() can check they all went away."""
        try:
            found = psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return
        with self._descendants_lock:
            self.descendants.update(found)

    def request(self, method: str, path: str = "/", **kwargs: Any) -> httpx.Response:
        """Send an HTTP request (httpx keyword arguments), then note the descendants."""
        try:
            return self.client.request(method, path, **kwargs)
        finally:
            self.track_descendants()

    def call(self, action: str, **params: str | float) -> httpx.Response:
        """GET /?action=... with further query parameters (for the router functions)."""
        return self.request("GET", "/", params={"action": action, **params})

    def raw_request(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes = b""
    ) -> RawExchange:
        """Send exactly these headers (+ Host, Content-Length) with http.client."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT_S)
        try:
            connection.connect()
            assert connection.sock is not None
            client_port = connection.sock.getsockname()[1]
            connection.putrequest(method, target, skip_accept_encoding=True)
            for name, value in [*headers, ("Content-Length", str(len(body)))]:
                connection.putheader(name, value)
            connection.endheaders(body)
            response = connection.getresponse()
            return RawExchange(response.status, response.headers, response.read(), client_port)
        finally:
            connection.close()
            self.track_descendants()

    def send_signal(self, sent: signal.Signals) -> None:
        """Signal the supervisor now; stop() then expects the exit it causes instead of
        signalling again: code 0, or -9 after SIGKILL."""
        assert self._process is not None
        self.track_descendants()
        self._signalled = sent
        self._process.send_signal(sent)

    def send_signal_alive(self, sent: signal.Signals) -> None:
        """Send a signal the supervisor is expected to survive (stop() still stops it)."""
        assert self._process is not None
        self._process.send_signal(sent)

    def wait_exit(self, timeout_s: float) -> int | None:
        """Wait up to `timeout_s` for the supervisor to exit; its exit code, or None."""
        assert self._process is not None
        try:
            return self._process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def wait_until(self, check: Callable[[], T], what: str,
                   timeout_s: float = LOG_DEADLINE_S) -> T:
        """Poll `check` until it returns something true; fail if the supervisor exits first."""
        return self._poll(check, what, time.monotonic() + timeout_s)

    def log_text(self) -> str:
        """Everything the supervisor wrote to stderr so far."""
        return self.log_path.read_text(errors="replace")

    def output_text(self) -> str:
        """Everything the supervisor wrote to stdout and stderr so far."""
        return self.stdout_path.read_text(errors="replace") + self.log_text()

    def log_records(self) -> list[dict[str, Any]]:
        """The JSON records of the log so far (with --log-format json)."""
        return json_log_records(self.log_text())

    def wait_for_text(self, text: str) -> str:
        """Wait until the log contains `text`; return the whole log."""

        def log_with_text() -> str | None:
            log = self.log_text()
            return log if text in log else None

        return self._poll(log_with_text, repr(text), time.monotonic() + LOG_DEADLINE_S)

    def wait_for_reports(self, request_ids: Iterable[str]) -> list[dict[str, Any]]:
        """Wait until the JSON log has a REPORT line for every id; return all its records."""
        wanted = set(request_ids)

        def records_with_reports() -> list[dict[str, Any]] | None:
            records = self.log_records()
            return records if wanted <= reported_request_ids(records) else None

        what = f"REPORT lines for {sorted(wanted)}"
        return self._poll(records_with_reports, what, time.monotonic() + LOG_DEADLINE_S)

    def log_tail(self) -> str:
        """The last lines of the log, for failure messages."""
        return "\n".join(self.log_text().splitlines()[-LOG_TAIL_LINES:])

    def stop(self, stop_signal: signal.Signals = signal.SIGTERM) -> list[str]:
        """Signal the supervisor and wait for it; return what went wrong (empty: all well).

        Problems: it had exited by itself, it needed SIGKILL, its exit code was not 0, or a
        process that was ever its descendant is still running (those are then killed). After
        send_signal(), no signal is sent: the exit that signal causes is awaited and checked.
        """
        if self._stopped or self._process is None:
            return []
        self._stopped = True
        self.client.close()
        self.track_descendants()
        problems = self._end_supervisor(stop_signal)
        leftovers = self._wait_descendants_gone()
        if leftovers:
            problems.append(f"processes left running after stop: {leftovers}")
        if problems:
            problems.append(f"log tail of {self.argv}:\n{self.log_tail()}")
        return problems

    def _end_supervisor(self, stop_signal: signal.Signals) -> list[str]:
        assert self._process is not None
        if self._signalled is not None:
            return self._await_exit(self._signalled)
        early_code = self._process.poll()
        if early_code is not None:
            return [f"sfsupervisor exited by itself with code {early_code} before it was stopped"]
        self._process.send_signal(stop_signal)
        return self._await_exit(stop_signal)

    def _await_exit(self, sent: signal.Signals) -> list[str]:
        assert self._process is not None
        try:
            code = self._process.wait(timeout=STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
            return [f"sfsupervisor still ran {STOP_DEADLINE_S} s after {sent.name}"]
        expected = -signal.SIGKILL if sent is signal.SIGKILL else 0
        if code != expected:
            return [f"sfsupervisor exited with code {code} on {sent.name}, expected {expected}"]
        return []

    def _wait_descendants_gone(self) -> list[str]:
        deadline = time.monotonic() + REAP_DEADLINE_S
        while alive := [process for process in self.descendants if is_alive(process)]:
            if time.monotonic() > deadline:
                return [self._kill_leftover(process) for process in alive]
            time.sleep(POLL_INTERVAL_S)
        return []

    @staticmethod
    def _kill_leftover(process: psutil.Process) -> str:
        description = str(process.pid)
        with contextlib.suppress(psutil.Error):
            description = f"{process.pid} {process.cmdline()}"
        with contextlib.suppress(psutil.Error):
            process.kill()
        return description

    def _accepts_connections(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def _poll(self, check: Callable[[], T], what: str, deadline: float) -> T:
        while True:
            self.track_descendants()
            result = check()
            if result:
                return result
            assert self._process is not None
            code = self._process.poll()
            if code is not None:
                pytest.fail(f"sfsupervisor exited with {code} while waiting for {what}:\n"
                            f"{self.log_tail()}", pytrace=False)
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} in time:\n{self.log_tail()}", pytrace=False)
            time.sleep(POLL_INTERVAL_S)


def ready_pids(log: str) -> dict[int, int]:
    """Instance id -> the pid of its worker, from the `instance N ready (pid P, ...)` lines.

    That pid is the process the supervisor started: its child in every tier, the leader of the
    instance's process group and session, and, in the `ns` tier, the keeper outside the
    namespaces (it ends as the instance ends, and killing it kills the instance).
    """
    return {int(match[1]): int(match[2])
            for line in complete_lines(log) if (match := READY_LINE.search(line))}


def call_instance(supervisor: Supervisor, request_id: str) -> int:
    """The instance that served a call, from the call's START line (text or JSON log)."""
    if supervisor.json_log:
        records = supervisor.wait_for_reports([request_id])
        return only_runtime_line(records, "START", request_id)[1]["instance"]
    log = supervisor.wait_for_text(f"REPORT RequestID: {request_id} ")
    escaped = re.escape(request_id)
    starts = re.findall(rf"\[(\d+) {escaped}\] START RequestID: {escaped} ", log)
    assert len(starts) == 1, f"{len(starts)} START lines for {request_id}"
    return int(starts[0])


def serving_pid(supervisor: Supervisor, response: httpx.Response) -> int:
    """The pid of the worker that served a call (see `ready_pids`): the call's X-Request-Id
    names its START line, which names its instance, whose READY line gives the pid."""
    instance = call_instance(supervisor, response.headers["X-Request-Id"])
    return ready_pids(supervisor.log_text())[instance]


def sandbox_tier(supervisor: Supervisor) -> str:
    """The sandbox tier in force (ns, uid or none), as the startup line names it."""
    log = supervisor.log_text()
    match = STARTUP_TIER.search(log)
    assert match, f"no startup line naming the sandbox tier in:\n{log[:2000]}"
    return match[1]


def instance_trees(supervisor: Supervisor) -> dict[psutil.Process, list[psutil.Process]]:
    """Each live child of the supervisor (its guard excepted) -> its live descendants.

    The children are the workers the supervisor started, and anything the supervisor adopted
    as a subreaper (a daemon that double-forked out of a worker outside a PID namespace).
    """
    return {child: live_descendants_of(child)
            for child in live_children(psutil.Process(supervisor.pid)) if not is_guard(child)}


@dataclass(frozen=True)
class PoolTree:
    """The supervisor's live processes: its ready workers' own, and every other one."""

    # A ready worker's pid -> the instance's processes in the tier's chain (worker first).
    workers: dict[int, list[psutil.Process]]
    # Every other live descendant but the guard: processes a function started that are still
    # there, instances not ready (yet), or processes a dead worker left.
    others: list[psutil.Process]


def pool_tree(supervisor: Supervisor) -> PoolTree:
    """Group the supervisor's live descendants by ready worker (see PoolTree).

    A ready worker's instance is the chain of PROCESSES_PER_INSTANCE[tier] processes below it
    and itself, each the only child of the one above; any other process below it is not the
    instance's own.
    """
    ready = set(ready_pids(supervisor.log_text()).values())
    length = PROCESSES_PER_INSTANCE[sandbox_tier(supervisor)]
    workers: dict[int, list[psutil.Process]] = {}
    others: list[psutil.Process] = []
    for child, below in instance_trees(supervisor).items():
        chain = instance_chain(child, length) if child.pid in ready else []
        if chain:
            workers[child.pid] = chain
        others += [process for process in [child, *below] if process not in chain]
    return PoolTree(workers, others)


def instance_chain(worker: psutil.Process, length: int) -> list[psutil.Process]:
    """`worker` and the processes below it, each the only live child of the one above, up to
    `length` processes in all."""
    chain = [worker]
    while len(chain) < length and len(children := live_children(chain[-1])) == 1:
        chain += children
    return chain


@dataclass(frozen=True)
class Scrape:
    """The samples of one /metrics scrape: (sample name, labels) -> value."""

    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples `name` whose labels include `labels` (0 when none)."""
        wanted = set(labels.items())
        return sum(value for (sample, have), value in self.samples.items()
                   if sample == name and wanted <= have)

    def label_values(self, name: str, label: str) -> set[str]:
        """The values the label `label` takes in the samples `name`."""
        return {value for sample, have in self.samples if sample == name
                for key, value in have if key == label}


def scrape_metrics(supervisor: Supervisor) -> Scrape:
    """GET /metrics and parse it as the Prometheus text format."""
    response = supervisor.request("GET", "/metrics")
    assert response.status_code == 200, f"{response.status_code}: {response.text}"
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
    return Scrape(samples)


def wait_metric(supervisor: Supervisor, expected: float, name: str, **labels: str) -> None:
    """Wait until /metrics shows `expected` as the sum of the samples `name` with `labels`."""
    supervisor.wait_until(
        lambda: scrape_metrics(supervisor).value(name, **labels) == expected,
        f"{name}{labels} == {expected}",
    )


def wait_busy(supervisor: Supervisor, count: int) -> None:
    """Wait until /metrics shows `count` busy instances."""
    wait_metric(supervisor, count, "sfsupervisor_instances", state="busy")


def wait_queued(supervisor: Supervisor, count: int) -> None:
    """Wait until /metrics shows `count` calls waiting for an instance."""
    wait_metric(supervisor, count, "sfsupervisor_queue_length")


def assert_refusal(response: httpx.Response, status: int, error_type: str, message: str) -> None:
    """A runtime refusal: `status`, a JSON body of exactly errorMessage (containing `message`)
    and errorType, and no X-Function-Error header (the function is not to blame)."""
    assert response.status_code == status, f"{response.status_code}: {response.text}"
    body = response.json()
    assert set(body) == {"errorMessage", "errorType"}, body
    assert body["errorType"] == error_type, body
    assert message in body["errorMessage"], body
    assert "X-Function-Error" not in response.headers


Launch = Callable[..., Supervisor]


@contextlib.contextmanager
def supervisor_launcher(log_dir: Path) -> Iterator[Launch]:
    """Yield `launch(entrypoint, *options, ...)`; on exit stop all launched, failing on problems.

    `launch` keywords: `code_root` (--dir, default tests/functions), `wait_instances` (wait for
    the `instances ready` line, default True), `command` (default `python -m supervisor`),
    `port_from_env` (pass the port as $PORT instead of --host/--port), `extra_env`, `stderr`
    (a descriptor for the supervisor's stderr instead of the log file), `config` (serve this
    --config file; `entrypoint` and `code_root` are then unused).
    """
    launched: list[Supervisor] = []

    def launch(
        entrypoint: str,
        *options: str,
        code_root: Path = FUNCTIONS_DIR,
        wait_instances: bool = True,
        command: tuple[str, ...] = PYTHON_M_SUPERVISOR,
        port_from_env: bool = False,
        extra_env: dict[str, str] | None = None,
        stderr: int | None = None,
        config: Path | None = None,
    ) -> Supervisor:
        port = free_port()
        address = [] if port_from_env else ["--host", "127.0.0.1", "--port", str(port)]
        env = {
            name: value
            for name, value in os.environ.items()
            if name != "PORT" and not name.startswith("SFSUPERVISOR_")
        }
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        if port_from_env:
            env["PORT"] = str(port)
        env.update(extra_env or {})
        if config is None:
            argv = [*command, "--dir", str(code_root), *address, *options, entrypoint]
        else:
            argv = [*command, "--config", str(config), *address, *options]
        supervisor = Supervisor(argv, env, port, log_dir, f"supervisor-{len(launched)}", stderr)
        launched.append(supervisor)
        supervisor.start(wait_instances)
        return supervisor

    try:
        yield launch
    finally:
        problems = [problem for supervisor in launched for problem in supervisor.stop()]
        if problems:
            pytest.fail("\n".join(problems), pytrace=False)


@functools.cache
def sandbox_unavailable(tier: str) -> str | None:
    """Why `--sandbox tier` cannot start on this machine (its one error line); None when it can."""
    line, code = _startup_line("--sandbox", tier, marker=SANDBOX_ERROR)
    if code is not None:
        assert code == 2 and line.startswith(SANDBOX_ERROR), f"exit code {code}, {line!r}"
        return line.strip()
    assert f"sandbox {tier}" in line, line
    return None


@functools.cache
def cgroup_unavailable() -> str | None:
    """Why `--memory-enforcement cgroup` cannot start on this machine; None when it can."""
    line, code = _startup_line("--memory-enforcement", "cgroup", marker=NO_CGROUP)
    if code is not None:
        assert code == 1 and NO_CGROUP in line, f"exit code {code}, {line!r}"
        return line.strip()
    assert ENFORCED_BY["cgroup"] in line, line
    return None


def _startup_line(*options: str, marker: str) -> tuple[str, int | None]:
    """Start a supervisor with `options`; its startup line and None once it serves (it is then
    stopped), or the line with `marker` and its exit code when it refused to start."""
    argv = [*PYTHON_M_SUPERVISOR, "--dir", str(FUNCTIONS_DIR), "--port", "0",
            "--instances", "1", "--spares", "0", *options, "hostile.handler"]
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("SFSUPERVISOR_")}
    with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, env=env,
                          cwd=FUNCTIONS_DIR) as probe:
        assert probe.stderr is not None
        line = next((line for line in probe.stderr if marker in line or SERVING in line), "")
        if SERVING not in line:
            return line, probe.wait(STOP_DEADLINE_S)
        probe.send_signal(signal.SIGTERM)
        probe.communicate(timeout=STOP_DEADLINE_S)
    return line, None
