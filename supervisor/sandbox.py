"""The sandbox: what keeps a function from reaching the host, the supervisor and its neighbours.

The tier is chosen once at start (`--sandbox`), by probing the exact sealing every worker will
do (worker/sandbox.py, run as `python -m worker.sandbox`):

- `ns` (root with namespace rights, or a user where unprivileged user namespaces are allowed):
  each instance in its own PID, mount, IPC and UTS namespaces, with its own /proc, /tmp and
  /dev/shm, the code root read-only, and, as root, its own uid;
- `uid` (root without namespace rights, e.g. a default container): each instance its own uid
  and gid from --sandbox-uids, no supplementary groups, and a private temporary directory;
- `none`: the supervisor's own user; a warning says what that leaves open.

`auto` takes the strongest tier whose probe passes. In every tier the worker sets no_new_privs
and makes itself non-dumpable, and the function's environment is only what it is given.

The per-instance uids come from a range, each held with a lock file while its instance lives,
so that two supervisors on one host never share one; before a uid is used again, whatever still
runs under it is killed.
"""

from __future__ import annotations

import ctypes
import fcntl
import getpass
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import worker
from supervisor.config import MB, Config, default_path

TIERS = ("ns", "uid", "none")
UID_LOCKS = Path("/run/sfsupervisor/uids")
PROBE_TIMEOUT_S = 20.0
_TMP_PREFIX = "sfsupervisor-"
_RUNTIME_PREFIX = "sfsupervisor-runtime-"
_PR_SET_DUMPABLE = 4
# The supervisor's own interpreter settings, passed on so that workers run the same interpreter
# the same way (PYTHONDONTWRITEBYTECODE: a cached .pyc of a file saved within the same second
# would otherwise survive a reload).
_INTERPRETER_VARIABLES = ("PYTHONPATH", "PYTHONHOME", "LD_LIBRARY_PATH", "PYTHONDONTWRITEBYTECODE")
NONE_LEAVES_OPEN = ("functions run as the supervisor's user: they can signal the supervisor "
                    "and each other, read each other's files and see every process")


class SandboxUnavailable(Exception):
    """The requested tier cannot work here; str() says why and what to do."""


@dataclass
class InstanceSandbox:
    """One instance's share of the sandbox: its uid, its temporary directory, its spec."""

    spec: dict[str, Any]  # what the worker seals itself with (the INIT frame carries it)
    environment: dict[str, str]  # HOME, TMPDIR, USER, LOGNAME
    uid: int | None
    _lock_fd: int = -1
    _tmp_dir: Path | None = None

    def release(self, emptied: bool) -> None:
        """The instance is gone: free its uid and empty its /tmp. Unless its cgroups or its PID
        namespace already ended every process of it (`emptied`), what still runs under its uid
        is killed first: the next instance given the uid must find nothing of this one."""
        if self.uid is not None and not emptied:
            kill_uid(self.uid)
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
        if self._tmp_dir is not None:
            shutil.rmtree(self._tmp_dir, ignore_errors=True)
            self._tmp_dir = None


class Sandbox:
    """The tier in force, and the maker of each instance's share of it."""

    def __init__(self, tier: str, config: Config, warning: str | None = None) -> None:
        self.tier = tier
        self.warning = warning
        self._config = config
        self._as_root = os.geteuid() == 0
        self._uids = range(config.sandbox_uids[0], config.sandbox_uids[1] + 1)
        # What every worker process starts with (see spawn_environment).
        self.spawn_environment = spawn_environment()
        self._next_uid = 0
        # Uids of the range that ran processes when we started, left by a supervisor that was
        # killed: they are swept when first given out (one look at /proc now, not one a spawn).
        self._stale_uids = _uids_running(self._uids) if self.gives_uids() else set()
        self._tmp_root: Path | None = None
        self._runtime_dir: Path | None = None  # the worker package alone, for other interpreters

    @property
    def description(self) -> str:
        if self.tier == "ns":
            who = "its own uid" if self._as_root else "a user namespace"
            network = ", no network" if self._config.no_network else ""
            return f"ns (namespaces per instance, {who}{network})"
        if self.tier == "uid":
            return f"uid (a uid per instance from {self._uids.start}-{self._uids.stop - 1})"
        return "none"

    def environment_for(self, python: str) -> dict[str, str]:
        """The environment a worker of `python` starts with. Another interpreter than ours
        (a function's own virtualenv) finds the runtime's worker package, and nothing else of
        the supervisor's installation, on its path."""
        if python == sys.executable:
            return self.spawn_environment
        if self._runtime_dir is None:
            self._runtime_dir = Path(tempfile.mkdtemp(prefix=_RUNTIME_PREFIX))
            (self._runtime_dir / "worker").symlink_to(Path(worker.__file__).parent)
        return {**self.spawn_environment, "PYTHONPATH": str(self._runtime_dir)}

    def for_instance(self, instance_id: int, config: Config) -> InstanceSandbox:
        """Allocate the instance's uid and temporary directory; OSError if none is free.
        `config` is its function's (code root, /tmp size, pids, network)."""
        uid, lock_fd = self._allocate_uid() if self.gives_uids() else (None, -1)
        try:
            tmp_dir = None if self.tier == "ns" else self._make_tmp_dir(instance_id, uid)
        except BaseException:
            if lock_fd >= 0:
                os.close(lock_fd)
            raise
        tmp = str(tmp_dir) if tmp_dir is not None else "/tmp"
        user = f"sfs{uid}" if uid is not None else getpass.getuser()
        return InstanceSandbox(
            spec=self.spec(uid, config),
            environment={"HOME": tmp, "TMPDIR": tmp, "USER": user, "LOGNAME": user},
            uid=uid, _lock_fd=lock_fd, _tmp_dir=tmp_dir,
        )

    def close(self) -> None:
        """Remove the supervisor's temporary directories (every instance is gone by now)."""
        for directory in (self._tmp_root, self._runtime_dir):
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)

    def gives_uids(self) -> bool:
        """Whether each instance gets a uid of its own."""
        return self._as_root and self.tier in ("ns", "uid")

    def spec(self, uid: int | None, config: Config) -> dict[str, Any]:
        """What a worker of `config`'s function seals itself with (the INIT frame carries it)."""
        return {
            "tier": self.tier, "uid": uid, "gid": uid, "tmp_bytes": config.tmp_mb * MB,
            "no_network": config.no_network, "code_root": str(config.code_root),
            "nproc": config.max_pids if uid is not None else None,
        }

    def _allocate_uid(self) -> tuple[int, int]:
        UID_LOCKS.mkdir(parents=True, exist_ok=True, mode=0o700)
        for _ in range(len(self._uids)):
            uid = self._uids[self._next_uid % len(self._uids)]
            self._next_uid += 1
            fd = os.open(UID_LOCKS / str(uid), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            if uid in self._stale_uids:
                kill_uid(uid)  # left by a supervisor that was killed: it is ours now
                self._stale_uids.discard(uid)
            return uid, fd
        raise OSError(f"every uid of --sandbox-uids {self._uids.start}-{self._uids.stop - 1} "
                      "is in use")

    def _make_tmp_dir(self, instance_id: int, uid: int | None) -> Path:
        if self._tmp_root is None:
            _remove_stale_tmp_roots()
            self._tmp_root = Path("/tmp") / f"{_TMP_PREFIX}{os.getpid()}"
            self._tmp_root.mkdir(mode=0o711, exist_ok=True)
        tmp_dir = self._tmp_root / f"i{instance_id}"
        tmp_dir.mkdir(mode=0o700)
        if uid is not None:
            os.chown(tmp_dir, uid, uid)
        return tmp_dir


def choose(config: Config) -> Sandbox:
    """The tier for `config.sandbox`; raises SandboxUnavailable when an asked tier cannot work."""
    return Choice(config).result()


class Choice:
    """The tier for `config.sandbox`, being chosen: the first tier's probe runs from here on, so
    that it overlaps what the caller does meanwhile (the supervisor's start imports most of its
    modules then: ~100 ms, and a probe, a sealed interpreter's start, takes ~70)."""

    def __init__(self, config: Config) -> None:
        self._config = config
        mode = config.sandbox
        self._needs_root = mode == "uid" and os.geteuid() != 0
        self._candidates = [] if mode == "none" or self._needs_root else (
            [mode] if mode != "auto" else (["ns", "uid"] if os.geteuid() == 0 else ["ns"]))
        # The first candidate and its probe, started now.
        self._begun: tuple[Sandbox, _Probe] | None = None
        if self._candidates:
            first = Sandbox(self._candidates[0], config)
            self._begun = (first, _start_probe(first, config))

    def result(self) -> Sandbox:
        """The tier in force; raises SandboxUnavailable when an asked tier cannot work."""
        config, mode = self._config, self._config.sandbox
        if self._needs_root:
            raise SandboxUnavailable("--sandbox uid needs the supervisor to run as root; "
                                     "without root use --sandbox ns (user namespaces) or none")
        if not self._candidates:
            return Sandbox("none", config)
        reasons = []
        for tier in self._candidates:
            if self._begun is not None:
                (sandbox, probe), self._begun = self._begun, None
            else:
                sandbox = Sandbox(tier, config)
                probe = _start_probe(sandbox, config)
            reason = _probe_verdict(probe)
            if reason is None:
                return sandbox
            if mode != "auto":
                raise SandboxUnavailable(f"--sandbox {tier}: {reason}")
            reasons.append(f"{tier}: {reason}")
        warning = (f"no sandbox ({'; '.join(reasons)}); {NONE_LEAVES_OPEN}. "
                   "Choose --sandbox none to accept this without a warning")
        return Sandbox("none", config, warning)


# A probe: its running process, or why it could not start.
_Probe = subprocess.Popen | str


def _start_probe(sandbox: Sandbox, config: Config) -> _Probe:
    """Start sealing a throwaway process exactly as a worker would (see _probe_verdict)."""
    spec = sandbox.spec(config.sandbox_uids[0] if sandbox.gives_uids() else None, config)
    try:
        return subprocess.Popen([sys.executable, "-P", "-m", "worker.sandbox", json.dumps(spec)],
                                cwd=config.code_root, env=spawn_environment(),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    except OSError as exc:
        return f"the probe could not run: {exc}"


def _probe_verdict(probe: _Probe) -> str | None:
    """None if the sealed process works as a worker's must, else why not."""
    if isinstance(probe, str):
        return probe
    try:
        stdout, stderr = probe.communicate(timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        probe.kill()
        probe.communicate()
        return f"the probe could not run: {exc}"
    try:
        outcome = json.loads(stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return f"the probe failed: {stderr.strip()[-300:] or probe.returncode}"
    if "error" in outcome:
        return f"this machine does not allow it ({outcome['error']})"
    if outcome["unreadable"]:
        paths = ", ".join(outcome["unreadable"])
        return (f"the sandbox uid cannot read {paths}: install Python, its packages and the "
                "code where other users can read them (e.g. chmod o+rx on each directory above "
                "them)")
    return None


def spawn_environment() -> dict[str, str]:
    """The environment a worker process starts with: what its interpreter needs, no secrets.

    The function's own environment is set inside the worker before its code is imported, as
    the platform's preloaded runtime does; the interpreter's variables are passed on so that
    the worker runs exactly the supervisor's interpreter and runtime.
    """
    kept = {name: os.environ[name] for name in _INTERPRETER_VARIABLES if name in os.environ}
    return {"PATH": default_path(), "LANG": "C.UTF-8", **kept}


def seal_supervisor() -> None:
    """Make the supervisor non-dumpable: no process of its uid (a function, under the `none`
    tier) can read its memory or /proc/<pid>/environ, where the host's secrets may be."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)


def kill_uid(uid: int) -> None:
    """SIGKILL every process running as `uid` (ours: the uid is locked by us)."""
    marker = f"Uid:\t{uid}\t".encode()
    for _ in range(5):  # a process may fork while we kill: look again
        victims = [pid for pid in _pids() if _status_starts_uid(pid, marker)]
        if not victims:
            return
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def _uids_running(uids: range) -> set[int]:
    """The uids of `uids` that some process runs as."""
    found = set()
    for pid in _pids():
        try:
            with open(f"/proc/{pid}/status", "rb") as status:
                for line in status:
                    if line.startswith(b"Uid:"):
                        uid = int(line.split()[1])
                        if uid in uids:
                            found.add(uid)
                        break
        except (OSError, ValueError, IndexError):
            continue
    return found


def _pids() -> list[int]:
    try:
        return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]
    except OSError:
        return []


def _status_starts_uid(pid: int, marker: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            return marker in status.read()
    except OSError:
        return False


def _remove_stale_tmp_roots() -> None:
    for stale in Path("/tmp").glob(f"{_TMP_PREFIX}*"):
        pid = stale.name.removeprefix(_TMP_PREFIX)
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(stale, ignore_errors=True)
