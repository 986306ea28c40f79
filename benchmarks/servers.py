"""The servers under test: how to start each on loopback, wait until it answers, and stop it.

Every server is started in its own session with its log in a file. Stopping one sends SIGTERM
to the command's pid, SIGKILL to its process group after a deadline, and then SIGKILL to any
process of its tree that survived (sfsupervisor's workers lead sessions of their own). Servers
still running when the harness stops, on an exception or Ctrl-C, are stopped by `stop_all`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from benchmarks import client

REPO_ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS_DIR = REPO_ROOT / "benchmarks" / "functions"
PEERS_DIR = REPO_ROOT / "benchmarks" / "peers"
READY_DEADLINE_S = 30.0
STOP_DEADLINE_S = 10.0
REAP_DEADLINE_S = 3.0
POLL_INTERVAL_S = 0.005

Command = Callable[[str, int, int, tuple[str, ...]], list[str]]


@dataclass(frozen=True)
class Peer:
    """One kind of server under test.

    `command(entry, port, workers, extra)` builds its command line for a handler entry such as
    `hello.handler`; `workers` is the pool size (ignored by single-process servers).
    """

    key: str
    label: str
    command: Command
    pooled: bool
    note: str

    def title(self, workers: int) -> str:
        """The label with the pool size, e.g. `gunicorn sync x4`."""
        return f"{self.label} x{workers if self.pooled else 1}"


def _sfsupervisor(entry: str, port: int, workers: int, extra: tuple[str, ...]) -> list[str]:
    return [sys.executable, "-m", "supervisor", "--instances", str(workers), "--port", str(port),
            "--dir", str(FUNCTIONS_DIR), *extra, entry]


def _quiet_sfsupervisor(entry: str, port: int, workers: int,
                        extra: tuple[str, ...]) -> list[str]:
    return _sfsupervisor(entry, port, workers, ("--log-level", "warning", *extra))


def _uvicorn(entry: str, port: int, workers: int, extra: tuple[str, ...]) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "benchmarks.peers.asgi_app:app",
            "--host", client.HOST, "--port", str(port), "--http", "httptools", "--loop", "uvloop",
            "--lifespan", "off", "--no-access-log", "--log-level", "warning", *extra]


def _gunicorn(entry: str, port: int, workers: int, extra: tuple[str, ...]) -> list[str]:
    return [sys.executable, "-m", "gunicorn", "--workers", str(workers),
            "--worker-class", "sync", "--bind", f"{client.HOST}:{port}", *extra,
            "benchmarks.peers.wsgi_app:app"]


def _functions_framework(source: str, asgi: bool) -> Command:
    def command(entry: str, port: int, workers: int, extra: tuple[str, ...]) -> list[str]:
        return [sys.executable, "-m", "functions_framework", "--source", str(PEERS_DIR / source),
                "--target", "handle", "--host", client.HOST, "--port", str(port),
                *(["--asgi"] if asgi else []), *extra]
    return command


PEERS = {
    peer.key: peer for peer in (
        Peer("uvicorn", "uvicorn in-process", _uvicorn, pooled=False,
             note="one process, handler called on the event loop, no access log: the ceiling"),
        Peer("gunicorn", "gunicorn sync", _gunicorn, pooled=True,
             note="pre-fork pool of sync workers (WSGI), one call per worker, no keep-alive"),
        Peer("ff", "functions-framework", _functions_framework("ff_flask.py", asgi=False),
             pooled=False,
             note="its default server: Flask under one gunicorn gthread worker, 8 threads"),
        Peer("ff-asgi", "functions-framework --asgi",
             _functions_framework("ff_asgi.py", asgi=True), pooled=False,
             note="Starlette under one gunicorn uvicorn worker; sync handlers in its thread pool"),
        Peer("sfsupervisor", "sfsupervisor", _sfsupervisor, pooled=True,
             note="supervisor + single-call workers, default options (info logging to a file; "
                  "its default warm spare runs too)"),
        Peer("sfsupervisor-quiet", "sfsupervisor --log-level warning", _quiet_sfsupervisor,
             pooled=True, note="as above without the per-call log lines"),
    )
}


class ServerFailed(RuntimeError):
    """A server exited or did not answer in time; `log_tail` holds the end of its log."""

    def __init__(self, message: str, log_tail: str = "", returncode: int | None = None) -> None:
        super().__init__(message)
        self.log_tail = log_tail
        self.returncode = returncode


_live: set[Server] = set()


class Server:
    """One running server process (and its children), started by `start`."""

    def __init__(self, command: list[str], port: int, log_path: Path, entry: str) -> None:
        self.command = command
        self.port = port
        self.log_path = log_path
        self.entry = entry
        self.started_at = 0.0
        self._popen: subprocess.Popen[bytes] | None = None
        self._tree: list[psutil.Process] | None = None

    @property
    def pid(self) -> int:
        """The pid of the command that was started."""
        assert self._popen is not None
        return self._popen.pid

    def start(self) -> None:
        """Start the command in a new session, its output going to the log file."""
        environment = {**os.environ, "BENCH_HANDLER": self.entry,
                       "PYTHONPATH": os.pathsep.join(filter(None, (
                           str(REPO_ROOT), os.environ.get("PYTHONPATH"))))}
        with open(self.log_path, "wb") as log:
            self.started_at = time.time()
            self._popen = subprocess.Popen(
                self.command, cwd=REPO_ROOT, env=environment, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        _live.add(self)

    def wait_ready(self, path: str = "/", deadline_s: float = READY_DEADLINE_S) -> float:
        """Poll until the server answers 200; returns seconds since `start`."""
        give_up = time.monotonic() + deadline_s
        while time.monotonic() < give_up:
            self.check_alive()
            if client.fetch(self.port, path, timeout_s=deadline_s).status == 200:
                return time.time() - self.started_at
            time.sleep(POLL_INTERVAL_S)
        raise ServerFailed(f"no 200 answer within {deadline_s:g} s", self.log_tail())

    def check_alive(self) -> None:
        """Raise ServerFailed if the command has exited."""
        assert self._popen is not None
        if self._popen.poll() is not None:
            code = self._popen.returncode
            raise ServerFailed(f"exited with code {code}", self.log_tail(), code)

    def processes(self) -> list[psutil.Process]:
        """The command's process and all its descendants, as they are now."""
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def terminate(self) -> None:
        """Send SIGTERM without waiting (`stop` waits), noting the tree as it is now."""
        if self._popen is None or self not in _live or self._tree is not None:
            return
        self._tree = self.processes()
        if self._popen.poll() is None:
            self._popen.send_signal(signal.SIGTERM)

    def stop(self) -> int | None:
        """SIGTERM, SIGKILL after a deadline; no process of the tree survives. Returns the code."""
        if self._popen is None or self not in _live:
            return None
        try:
            self.terminate()
            tree = self._tree or []
            try:
                self._popen.wait(STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                _kill_group(self.pid)
                self._popen.wait()
            _kill_survivors([p for p in tree if p.pid != self.pid])
        finally:
            _live.discard(self)
        return self._popen.returncode

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the server's log."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(max(0, log.seek(0, os.SEEK_END) - 16384))
                text = log.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def stop_all() -> None:
    """Stop every server that is still running (used on the way out, whatever happened)."""
    for server in list(_live):
        server.terminate()
    for server in list(_live):
        server.stop()


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind((client.HOST, 0))
        return probe.getsockname()[1]


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _kill_survivors(processes: list[psutil.Process]) -> None:
    alive = _wait_gone(processes, REAP_DEADLINE_S)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    _wait_gone(alive, REAP_DEADLINE_S)


def _wait_gone(processes: list[psutil.Process], deadline_s: float) -> list[psutil.Process]:
    """Poll until none of `processes` runs; those still running at the deadline.

    One that has exited counts as gone, though it stays a zombie until its new parent reaps it:
    a server's orphans go to init, which may take a second or two (psutil.wait_procs would wait
    for that too).
    """
    give_up = time.monotonic() + deadline_s
    while (running := [process for process in processes if _runs(process)]) \
            and time.monotonic() < give_up:
        time.sleep(POLL_INTERVAL_S)
    return running


def _runs(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
