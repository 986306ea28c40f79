"""Real nginx in front of two real supervisors: SIGKILL one mid-load; only its calls in flight fail.

This checks the nginx setup that deploy/README.md recommends, end to end, with the shipped file
itself: deploy/nginx/sfsupervisor.conf (its two `server` ports and its `listen` substituted) is
included into a harness config written to tmp_path, and Debian's nginx runs it by pid. Two
`python -m supervisor` processes (4 instances each) serve tests/functions/slow_echo.py: a 0.2 s
call that names the supervisor that ran it and records its start in a marks file (in a shared
directory outside /tmp that every sandbox uid may write to).

The shipped settings under test: `least_conn` balancing, keep-alive connections to the
supervisors, and `proxy_next_upstream error timeout http_503` without `non_idempotent` — a call
whose supervisor dies is retried on the other one if it is a GET, and never if it is a POST (it
may have had effects already).

Eight client threads alternate GET and POST calls through nginx; once both supervisors have
served calls, one is SIGKILLed. Expected: the POSTs that were running on it fail with 502 and ran
nowhere else, the GETs that were running on it are answered by the survivor, no more calls were
on it than its instances (least_conn with 8 clients over 4+4 instances never queues), every other
call succeeds, every call after its death goes to the survivor, its workers die with it (the
launcher's stop() checks), and nginx leaves no process behind.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
from e2e_helpers import Launch, Supervisor, free_port, is_alive, shared_file

SHIPPED_CONF = Path(__file__).resolve().parent.parent / "deploy" / "nginx" / "sfsupervisor.conf"
INSTANCES = 4
CLIENTS = 8
CALL_SECONDS = 0.2
SUPERVISOR_TIMEOUT_S = 10
WARMUP_CALLS_EACH = 20
CALLS_AFTER_DEATH = 40
START_DEADLINE_S = 15.0
LOAD_DEADLINE_S = 25.0
STOP_DEADLINE_S = 10.0
CLIENT_TIMEOUT_S = 30.0
POLL_S = 0.02
METHODS = ("GET", "POST")
MB = 1024 * 1024

# What surrounds the shipped file: everything nginx writes goes to tmp_path, every response
# names the supervisors nginx tried (X-Upstream), and the access log records them per call.
HARNESS_CONF = """\
{user_line}
daemon off;
master_process on;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;

events {{
    worker_connections 256;
}}

http {{
    log_format calls '$http_x_call $request_method $status "$upstream_addr" '
                     '"$upstream_status" $request_time';
    access_log {tmp}/access.log calls;
    add_header X-Upstream $upstream_addr always;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;

    include {tmp}/sfsupervisor.conf;
}}
"""
SHIPPED_SERVER_LINE = re.compile(r"^(\s*server\s+)127\.0\.0\.1:\d+(\s)", re.MULTILINE)
SHIPPED_LISTEN_LINE = re.compile(r"^(\s*listen\s+)80;", re.MULTILINE)


def _require(ready: bool, what: str) -> None:
    """Missing tools fail the test in CI (an install step is missing) and skip it elsewhere."""
    if ready:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} is not installed; CI must install it to run the nginx tests")
    pytest.skip(f"{what} is not installed")


def _find_nginx() -> str | None:
    """nginx on PATH, or Debian's /usr/sbin/nginx (not on a normal user's PATH)."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")


def shipped_conf_for(port: int, upstream_ports: tuple[int, int]) -> str:
    """deploy/nginx/sfsupervisor.conf with our supervisors' ports and a loopback listen port."""
    text = SHIPPED_CONF.read_text()
    ports = iter(upstream_ports)
    text, servers = SHIPPED_SERVER_LINE.subn(lambda m: f"{m[1]}127.0.0.1:{next(ports)}{m[2]}",
                                             text)
    text, listens = SHIPPED_LISTEN_LINE.subn(rf"\g<1>127.0.0.1:{port};", text)
    assert (servers, listens) == (2, 1), (
        f"{SHIPPED_CONF} should have two `server 127.0.0.1:PORT` lines and one `listen 80;` "
        f"(found {servers} and {listens}); update this test with it")
    return text


def harness_conf(directory: Path) -> str:
    user_line = "user root;" if os.geteuid() == 0 else ""  # workers must reach our tmp_path
    return HARNESS_CONF.format(user_line=user_line, tmp=directory)


@dataclass(frozen=True)
class Outcome:
    """One call made through nginx, as the client saw it."""

    call: str
    method: str
    started: float
    ended: float
    status: int  # 0: no HTTP answer at all
    served_by: str
    upstreams: tuple[str, ...]  # nginx's $upstream_addr: every supervisor tried, in order


class Nginx:
    """A real nginx master process (and its workers) started from a config file, by pid."""

    def __init__(self, binary: str, directory: Path, port: int) -> None:
        self.directory = directory
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._binary = binary
        self._process: subprocess.Popen[bytes] | None = None
        self._family: set[psutil.Process] = set()

    def start(self, site_conf: str) -> None:
        """Write the configs, start nginx, wait until it answers."""
        (self.directory / "sfsupervisor.conf").write_text(site_conf)
        conf_path = self.directory / "nginx.conf"
        conf_path.write_text(harness_conf(self.directory))
        with (self.directory / "nginx.out").open("wb") as output:
            self._process = subprocess.Popen(
                [self._binary, "-p", str(self.directory), "-c", str(conf_path),
                 "-e", str(self.directory / "error.log")],
                stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_DEADLINE_S
        while not self._answers():
            if self._process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"nginx did not start:\n{self.error_log()}", pytrace=False)
            time.sleep(POLL_S)
        self.track_family()

    def track_family(self) -> None:
        """Remember the master and its current workers, so stop() can check they all ended."""
        if self._process is None:
            return
        with contextlib.suppress(psutil.NoSuchProcess):
            master = psutil.Process(self._process.pid)
            self._family.add(master)
            self._family.update(master.children(recursive=True))

    def stop(self) -> list[str]:
        """SIGQUIT (graceful), then SIGKILL; return what went wrong (empty: all well)."""
        if self._process is None:
            return []
        self.track_family()
        problems = []
        if self._process.poll() is not None:
            problems.append(f"nginx exited by itself with code {self._process.returncode}")
        else:
            self._process.send_signal(signal.SIGQUIT)
            try:
                self._process.wait(timeout=STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                problems.append(f"nginx still ran {STOP_DEADLINE_S} s after SIGQUIT")
                self._process.kill()
                self._process.wait()
        problems.extend(self._wait_family_gone())
        return problems

    def _wait_family_gone(self) -> list[str]:
        deadline = time.monotonic() + STOP_DEADLINE_S
        while alive := [process for process in self._family if is_alive(process)]:
            if time.monotonic() > deadline:
                for process in alive:
                    with contextlib.suppress(psutil.Error):
                        process.kill()
                return [f"nginx processes left running: {[p.pid for p in alive]}"]
            time.sleep(POLL_S)
        return []

    def error_log(self) -> str:
        path = self.directory / "error.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else "(no error log)"

    def access_log(self) -> str:
        path = self.directory / "access.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _answers(self) -> bool:
        try:
            with httpx.Client(trust_env=False, timeout=1.0) as client:
                client.get(f"{self.url}/healthz")
            return True
        except httpx.TransportError:
            return False


StartNginx = Callable[[tuple[int, int]], Nginx]


@pytest.fixture
def start_nginx(tmp_path: Path) -> Iterator[StartNginx]:
    """Yield `start(upstream_ports)`: nginx running the shipped config in front of them. On
    exit, stop it and fail if any of its processes is left."""
    binary = _find_nginx()
    _require(binary is not None, "nginx (apt-get install -y nginx)")
    assert binary is not None
    started: list[Nginx] = []

    def start(upstream_ports: tuple[int, int]) -> Nginx:
        directory = tmp_path / "nginx"
        directory.mkdir()
        port = free_port()
        nginx = Nginx(binary, directory, port)
        started.append(nginx)
        nginx.start(shipped_conf_for(port, upstream_ports))
        return nginx

    yield start
    problems = [problem for nginx in started for problem in nginx.stop()]
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


class Load:
    """Client threads calling through nginx in a loop, alternating GET and POST."""

    def __init__(self, base_url: str, clients: int) -> None:
        self._base_url = base_url
        self._clients = clients
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.outcomes: list[Outcome] = []

    def start(self) -> None:
        for index in range(self._clients):
            thread = threading.Thread(target=self._loop, args=(index,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(CLIENT_TIMEOUT_S + 5)
        assert not any(thread.is_alive() for thread in self._threads), "a client thread hangs"

    def snapshot(self) -> list[Outcome]:
        with self._lock:
            return list(self.outcomes)

    def _loop(self, index: int) -> None:
        with httpx.Client(base_url=self._base_url, timeout=CLIENT_TIMEOUT_S,
                          trust_env=False) as client:
            sequence = 0
            while not self._stop.is_set():
                method = METHODS[(index + sequence) % len(METHODS)]
                outcome = call_through(client, method, f"c{index}-{sequence}")
                with self._lock:
                    self.outcomes.append(outcome)
                sequence += 1


def call_through(client: httpx.Client, method: str, call: str) -> Outcome:
    """One slow_echo call; what the client saw of it."""
    started = time.monotonic()
    params = {"call": call, "seconds": CALL_SECONDS}
    try:
        response = client.request(method, "/", params=params, headers={"X-Call": call},
                                  content=b"{}" if method == "POST" else None)
    except httpx.TransportError:
        return Outcome(call, method, started, time.monotonic(), 0, "", ())
    served_by = response.json()["served_by"] if response.status_code == 200 else ""
    tried = response.headers.get("X-Upstream", "").split(",")
    upstreams = tuple(item.strip() for item in tried if item.strip())
    return Outcome(call, method, started, time.monotonic(), response.status_code, served_by,
                   upstreams)


def wait_for(check: Callable[[], bool], what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout_s} s", pytrace=False)
        time.sleep(POLL_S)


def served_counts(outcomes: list[Outcome]) -> collections.Counter[str]:
    return collections.Counter(o.served_by for o in outcomes if o.status == 200)


def read_marks(path: Path) -> dict[str, list[str]]:
    """call -> the supervisors it started on, in order (from slow_echo's marks file)."""
    starts: dict[str, list[str]] = collections.defaultdict(list)
    for line in path.read_text().splitlines():
        served_by, call = line.split()
        starts[call].append(served_by)
    return starts


def rerun_on_survivor(outcomes: list[Outcome], starts: dict[str, list[str]]) -> list[Outcome]:
    """Calls that started on the doomed supervisor `a` and were answered by the survivor `b`."""
    return [o for o in outcomes
            if o.status == 200 and starts[o.call][:1] == ["a"] and o.served_by == "b"]


def launch_pair(launch: Launch, marks: Path) -> tuple[Supervisor, Supervisor]:
    """Two slow_echo supervisors, `a` and `b`, recording call starts into `marks`."""
    common = ("--instances", str(INSTANCES), "--spares", "0",
              "--timeout", str(SUPERVISOR_TIMEOUT_S), "--env", f"CALL_MARKS={marks}")
    first = launch("slow_echo.handler", *common, "--env", "SERVED_BY=a")
    second = launch("slow_echo.handler", *common, "--env", "SERVED_BY=b")
    return first, second


@pytest.mark.timeout(60)
def test_sigkill_of_one_supervisor_fails_only_its_calls_in_flight(
    launch_supervisor: Launch, start_nginx: StartNginx, shared_dir: Path
) -> None:
    # Where every instance's uid can append, in every sandbox tier (not tmp_path: it is 0700).
    marks_path = shared_file(shared_dir, "marks.txt")
    doomed, survivor = launch_pair(launch_supervisor, marks_path)
    nginx = start_nginx((doomed.port, survivor.port))
    load = Load(nginx.url, CLIENTS)
    load.start()
    try:
        wait_for(lambda: min(served_counts(load.snapshot())[name] for name in "ab")
                 >= WARMUP_CALLS_EACH, "calls served by both supervisors", LOAD_DEADLINE_S)
        doomed.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        assert doomed.wait_exit(STOP_DEADLINE_S) == -signal.SIGKILL
        dead_at = time.monotonic()
        wait_for(lambda: sum(o.started > dead_at for o in load.snapshot()) >= CALLS_AFTER_DEATH,
                 "calls after the kill", LOAD_DEADLINE_S)
        nginx.track_family()
    finally:
        load.stop()

    outcomes = load.outcomes
    starts = read_marks(marks_path)
    addresses = {"a": f"127.0.0.1:{doomed.port}", "b": f"127.0.0.1:{survivor.port}"}
    report = summary(outcomes, starts, addresses["a"], nginx)
    failed = [o for o in outcomes if o.status != 200]
    rescued = rerun_on_survivor(outcomes, starts)

    # Only POSTs failed, each with nginx's 502, tried on the dead supervisor alone and run
    # nowhere else: nginx did not run a non-idempotent call a second time.
    for outcome in failed:
        assert outcome.method == "POST", f"{outcome}\n{report}"
        assert outcome.status == 502, f"{outcome}\n{report}"
        assert outcome.upstreams == (addresses["a"],), f"{outcome}\n{report}"
        assert starts[outcome.call] in ([], ["a"]), f"{outcome}\n{report}"
    # The calls rerun on the survivor after starting on the dead one were all GETs.
    assert all(o.method == "GET" for o in rescued), report
    # Calls on the dead supervisor at its death: at most its instances, and the kill hit some.
    assert 1 <= len(failed) + len(rescued) <= INSTANCES, report
    # Each success came from the supervisor nginx names last; no POST ran twice.
    for outcome in outcomes:
        if outcome.status == 200:
            assert outcome.upstreams[-1:] == (addresses[outcome.served_by],), \
                f"{outcome}\n{report}"
        if outcome.method == "POST":
            assert len(starts[outcome.call]) <= 1, f"{outcome}\n{report}"
    # Calls that ended before the kill all succeeded; calls after its death all went to the
    # survivor and succeeded.
    assert all(o.status == 200 for o in outcomes if o.ended < killed_at), report
    after = [o for o in outcomes if o.started > dead_at]
    assert after and all(o.status == 200 and o.served_by == "b" for o in after), report
    print(report)  # the measured figures, shown with pytest -s


@pytest.mark.timeout(60)
def test_bodies_up_to_the_platform_limit_pass_nginx(
    launch_supervisor: Launch, start_nginx: StartNginx
) -> None:
    """client_max_body_size: nginx lets the platform's 3.5 MB through, and a larger body gets
    the supervisor's own JSON 413, not nginx's HTML one (nginx's default limit is 1 MB)."""
    first = launch_supervisor("slow_echo.handler", "--spares", "0", "--env", "SERVED_BY=a")
    second = launch_supervisor("slow_echo.handler", "--spares", "0", "--env", "SERVED_BY=b")
    nginx = start_nginx((first.port, second.port))
    with httpx.Client(base_url=nginx.url, timeout=CLIENT_TIMEOUT_S, trust_env=False) as client:
        fits = client.post("/", params={"seconds": 0}, content=b"x" * int(3.4 * MB))
        too_large = client.post("/", params={"seconds": 0}, content=b"x" * int(3.6 * MB))
    assert fits.status_code == 200, fits.text[:500]
    assert fits.json()["served_by"] in {"a", "b"}
    assert too_large.status_code == 413, too_large.text[:500]
    assert too_large.json()["errorType"] == "RequestTooLarge"


def summary(outcomes: list[Outcome], starts: dict[str, list[str]], doomed_address: str,
            nginx: Nginx) -> str:
    """The figures of a kill run, and nginx's view of the calls it hit, for messages."""
    failed = [o for o in outcomes if o.status != 200]
    rescued = rerun_on_survivor(outcomes, starts)
    by_method = collections.Counter(o.method for o in outcomes)
    hit = {o.call for o in failed} | {o.call for o in rescued}
    access = [line for line in nginx.access_log().splitlines()
              if line.split(" ", 1)[0] in hit]
    return "\n".join([
        f"calls: {len(outcomes)} {dict(by_method)}, served: {dict(served_counts(outcomes))}",
        f"failed: {len(failed)} {[(o.call, o.method, o.status, o.upstreams) for o in failed]}",
        f"GETs rerun on the survivor: {len(rescued)} {[o.call for o in rescued]}",
        f"killed supervisor: {doomed_address}",
        "access log of those calls:\n" + "\n".join(access),
        "nginx error log tail:\n" + "\n".join(nginx.error_log().splitlines()[-12:]),
    ])
