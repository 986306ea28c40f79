"""Memory limits and whole-tree kills: what bounds an instance besides its deadline.

The memory limit is enforced by the strongest mechanism the machine allows, chosen once at start:

- cgroup v2: a child cgroup per instance with `memory.max`; the kernel stops the allocation and
  OOM-kills inside the cgroup, and `memory.events` counts the kill;
- cgroup v1: a child of the supervisor's own memory cgroup with `memory.limit_in_bytes`, with
  `memory.oom_control` counting kills;
- otherwise a watchdog: the pool samples the current resident memory of every live instance's
  process tree each millisecond and kills the instance that passes the limit.

The worker joins its cgroup before the interpreter starts (through `sh -c 'echo $$ > procs; exec
python ...'`), so everything it allocates is charged. Current usage is measured, never a
high-water mark such as ru_maxrss, which would make a fresh worker look as big as its parent.
"""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import psutil

MB = 1024 * 1024
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
_CGROUP_PREFIX = "sfsupervisor-"
_PR_SET_CHILD_SUBREAPER = 36

ChildrenMap = dict[int, list[int]]


def children_map() -> ChildrenMap:
    """Every process's children, from one pass over /proc (about 1 ms for 100 processes).

    Linux lists no children per process without CONFIG_PROC_CHILDREN, so a tree is found by
    reading each process's parent; callers share one map rather than scanning per instance.
    """
    children: ChildrenMap = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return children  # out of descriptors, say: the callers try again later
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                ppid = int(stat.read().rpartition(b")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    return children


def descendants(pid: int, children: ChildrenMap) -> list[int]:
    """The pids below `pid` in the process tree."""
    found: list[int] = []
    pending = list(children.get(pid, ()))
    while pending:
        child = pending.pop()
        found.append(child)
        pending.extend(children.get(child, ()))
    return found


@dataclass(frozen=True)
class CgroupLayout:
    """Where the memory controller's files are: their names differ between v1 and v2."""

    version: int
    limit_file: str
    peak_file: str
    usage_file: str
    events_file: str


V1 = CgroupLayout(1, "memory.limit_in_bytes", "memory.max_usage_in_bytes", "memory.usage_in_bytes",
                  "memory.oom_control")
V2 = CgroupLayout(2, "memory.max", "memory.peak", "memory.current", "memory.events")


class InstanceMemory:
    """Memory accounting and tree membership for one worker; the watchdog's kind."""

    description: ClassVar[str] = "watchdog (sampling each instance's process tree every 1 ms)"
    # Readable when the kernel OOM-kills a process of the instance (cgroup v1 only).
    oom_events_fd = -1
    # Whether the worker should measure its own per-call peak (a cgroup knows it already).
    needs_worker_peak = True

    def __init__(self, limit_bytes: int,
                 remove_directory: Callable[[Path], None] | None = None) -> None:
        self.limit_bytes = limit_bytes
        self.pid = 0
        self._remove_directory = remove_directory or _rmdir_quietly
        self._statm_fds: dict[int, int] = {}
        # Resident bytes of a process not counted against the instance (see _track).
        self._baselines: dict[int, int] = {}
        self._call_peak_bytes = 0
        # The instance's pids cgroup (bounds its processes and threads), where there is one.
        self.pids_dir: Path | None = None

    def limit_processes(self, path: Path, max_pids: int) -> None:
        """Put the instance in the pids cgroup `path`, limited to `max_pids` tasks."""
        path.mkdir(exist_ok=True)  # on cgroup v2 it may be the memory cgroup itself
        self.pids_dir = path
        (path / "pids.max").write_text(str(max_pids))

    def command(self, argv: list[str]) -> list[str]:
        """The command that starts the worker under this limit: it joins its cgroups first."""
        return _joining(self._cgroup_dirs(), argv)

    def _cgroup_dirs(self) -> list[Path]:
        return [self.pids_dir] if self.pids_dir is not None else []

    @property
    def tracks_every_process(self) -> bool:
        """Whether a cgroup holds every process of the instance (so killing it ends them all)."""
        return bool(self._cgroup_dirs())

    def started(self, pid: int) -> None:
        self.pid = pid
        self._track([pid])

    def call_started(self) -> None:
        self._call_peak_bytes = 0

    def call_peak_kb(self, reported_kb: int) -> int:
        """The call's peak: what the worker saw of itself, or what sampling saw of its tree."""
        return max(reported_kb, self._call_peak_bytes // 1024)

    def sample(self, children: ChildrenMap | None) -> int:
        """Current resident bytes of the worker's tree (the watchdog calls this every tick).

        Resident memory is read from kept-open statm files (~1 µs each); `children`, when
        given, is a fresh process map in which to look for processes new to the tree.
        """
        if children is not None:
            self._track(descendants(self.pid, children))
        used = self.current_bytes()
        self._call_peak_bytes = max(self._call_peak_bytes, used)
        return used

    def current_bytes(self) -> int:
        """Resident memory of the processes known to be in the instance's tree."""
        used = 0
        for pid in list(self._statm_fds):
            used += max(0, self._resident_bytes(pid) - self._baselines[pid])
        return used

    def _resident_bytes(self, pid: int) -> int:
        try:
            return int(os.pread(self._statm_fds[pid], 64, 0).split()[1]) * _PAGE_BYTES
        except (OSError, IndexError, ValueError):
            os.close(self._statm_fds.pop(pid))
            self._baselines.pop(pid, None)
            return 0

    def oom_killed(self) -> bool:
        """Whether the kernel killed a process of this instance for memory (cgroups only)."""
        return False

    def pids(self, children: ChildrenMap) -> set[int]:
        """Every live process of the instance: its tree, and its cgroups' members."""
        tree = {self.pid, *descendants(self.pid, children)} if self.pid else set()
        return tree | _members(self._cgroup_dirs())

    def kill_all(self) -> None:
        """SIGKILL every process of the instance, including children that left its group.

        A cgroup lists them exactly (the worker joins it before it runs): that list is read
        instead of walking the tree through /proc, a pass over every process of the host that
        cost ~5 ms per instance death here, on the loop, on every crash, timeout and recycle.
        """
        killed: set[int] = set()
        for _ in range(5):  # a process may fork while we walk the tree: walk again
            if self.tracks_every_process:
                pids = _members(self._cgroup_dirs()) - killed
            else:
                pids = self.pids(children_map()) - killed
            if not pids:
                return
            _kill(pids)
            killed |= pids

    def release(self) -> None:
        """The worker has been reaped: forget it (its pid may soon name another process)."""
        self.pid = 0
        for fd in self._statm_fds.values():
            os.close(fd)
        self._statm_fds.clear()
        self._baselines.clear()
        if self.pids_dir is not None:
            self._remove_directory(self.pids_dir)

    def _track(self, pids: Iterable[int]) -> None:
        """Start reading the resident memory of processes new to the tree.

        Summing plain RSS would count a forked child's copy-on-write pages, shared with its
        parent, once per child (50 forks of a 20 MB worker would "use" 1 GB). So a child is
        counted from a baseline: its resident memory when first seen, but at most the
        worker's. A fork's shared pages are then not counted again, while memory a child
        allocates, before or after it is first seen, is. The worker counts in full.
        """
        worker_bytes = self._resident_bytes(self.pid) if self.pid in self._statm_fds else 0
        for pid in set(pids) - self._statm_fds.keys():
            try:
                self._statm_fds[pid] = os.open(f"/proc/{pid}/statm", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            self._baselines[pid] = 0
            if pid != self.pid:
                resident = self._resident_bytes(pid)
                if pid in self._statm_fds:
                    self._baselines[pid] = min(resident, worker_bytes)


class CgroupMemory(InstanceMemory):
    """An instance in its own memory cgroup: the kernel enforces the limit."""

    needs_worker_peak = False

    def __init__(self, limit_bytes: int, path: Path, layout: CgroupLayout,
                 remove_directory: Callable[[Path], None] | None = None) -> None:
        super().__init__(limit_bytes, remove_directory)
        self.path = path
        self._layout = layout
        self._peak_fd = self._oom_control_fd = -1
        path.mkdir()
        try:
            self._set_up(limit_bytes)
        except BaseException:
            self.release()  # a failed start must leak neither descriptors nor the directory
            raise

    def _set_up(self, limit_bytes: int) -> None:
        path, layout = self.path, self._layout
        (path / layout.limit_file).write_text(str(limit_bytes))
        if layout.version == 2:
            _write_if_present(path / "memory.swap.max", "0")
            _write_if_present(path / "memory.oom.group", "1")
        self._oom_kills_at_start = self._oom_kills()
        # memory.peak (v2) resets per open file: keep one open for the instance's lifetime.
        self._peak_fd = os.open(path / layout.peak_file, os.O_RDWR | os.O_CLOEXEC)
        if layout.version == 1:
            self._watch_oom_kills()

    def _watch_oom_kills(self) -> None:
        """Ask v1 for an eventfd notification on OOM in this cgroup.

        v1 has no memory.oom.group: the kernel kills one process, maybe a child of the worker,
        and the instance would go on. The notification lets the supervisor stop the whole
        instance, as v2 with memory.oom.group and the watchdog do.
        """
        self.oom_events_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._oom_control_fd = os.open(self.path / self._layout.events_file,
                                       os.O_RDONLY | os.O_CLOEXEC)
        (self.path / "cgroup.event_control").write_text(
            f"{self.oom_events_fd} {self._oom_control_fd}")

    def _cgroup_dirs(self) -> list[Path]:
        return [self.path, *(d for d in super()._cgroup_dirs() if d != self.path)]

    def started(self, pid: int) -> None:
        self.pid = pid

    def call_started(self) -> None:
        try:
            os.pwrite(self._peak_fd, b"0" if self._layout.version == 1 else b"reset", 0)
        except OSError:
            pass  # before Linux 6.12 a v2 peak cannot be reset: it stays the lifetime peak

    def call_peak_kb(self, reported_kb: int) -> int:
        try:
            return int(os.pread(self._peak_fd, 32, 0)) // 1024
        except (OSError, ValueError):
            return reported_kb

    def sample(self, children: ChildrenMap | None) -> int:
        return 0  # the kernel enforces the limit; nothing to watch

    def current_bytes(self) -> int:
        try:
            return int((self.path / self._layout.usage_file).read_text())
        except (OSError, ValueError):
            return 0

    def oom_killed(self) -> bool:
        return self._oom_kills() > self._oom_kills_at_start

    def kill_all(self) -> None:
        if self._layout.version == 2:
            _write_if_present(self.path / "cgroup.kill", "1")
        super().kill_all()

    def release(self) -> None:
        super().release()
        for fd in (self._peak_fd, self._oom_control_fd, self.oom_events_fd):
            if fd >= 0:
                os.close(fd)
        self._peak_fd = self._oom_control_fd = self.oom_events_fd = -1
        self._remove_directory(self.path)

    def _oom_kills(self) -> int:
        try:
            for line in (self.path / self._layout.events_file).read_text().splitlines():
                name, _, value = line.partition(" ")
                if name == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0


class MemoryEnforcement:
    """Makes the InstanceMemory of each new instance; the choice is made once at start."""

    def __init__(self, parent: Path | None, layout: CgroupLayout | None,
                 pids_parent: Path | None = None) -> None:
        self._parent = parent
        self._layout = layout
        self._pids_parent = pids_parent
        self._remover = _DirectoryRemover()

    @property
    def description(self) -> str:
        if self._parent is None or self._layout is None:
            return InstanceMemory.description
        return f"cgroup v{self._layout.version} ({self._parent / self._layout.limit_file})"

    @property
    def uses_watchdog(self) -> bool:
        return self._parent is None

    @property
    def limits_processes(self) -> bool:
        """Whether each instance gets a pids cgroup (a fork bomb stays inside it)."""
        return self._pids_parent is not None

    def for_instance(self, instance_id: int, limit_mb: int, max_pids: int) -> InstanceMemory:
        """The accounting of a new instance limited to `limit_mb` and `max_pids` (its
        function's own limits: with --config they differ between functions)."""
        limit_bytes = limit_mb * MB
        remove = self._remover.remove
        if self._parent is None or self._layout is None:
            memory = InstanceMemory(limit_bytes, remove)
        else:
            memory = CgroupMemory(limit_bytes, self._parent / f"i{instance_id}", self._layout,
                                  remove)
        if self._pids_parent is not None:
            try:
                memory.limit_processes(self._pids_parent / f"i{instance_id}", max_pids)
            except BaseException:
                memory.release()
                raise
        return memory

    def cgroup_directories(self) -> list[Path]:
        """The directories holding this supervisor's instance cgroups."""
        return list(dict.fromkeys(d for d in (self._parent, self._pids_parent) if d is not None))

    def remove_released(self) -> None:
        """Try again to remove the cgroups of reaped instances that still held dying
        processes when their removal was first tried."""
        self._remover.retry_busy()

    def close(self) -> None:
        """Remove the supervisor's cgroup directories (its instances are gone by now)."""
        self._remover.finish()
        for directory in self.cgroup_directories():
            _remove_cgroup_tree(directory)


class _DirectoryRemover:
    """Removes the cgroups of reaped instances on a thread of its own.

    The kernel takes 3-7 ms here to remove a cgroup v1 pids directory, and holds the lock of
    every cgroup operation meanwhile; on the loop, after every crash, timeout and recycle, that
    was that much more before the next request was even read. rmdir releases the GIL, so the
    loop goes on meanwhile. A directory still busy (its killed processes not gone yet) is kept
    for retry_busy().
    """

    def __init__(self) -> None:
        self._pending: queue.SimpleQueue[Path | None] = queue.SimpleQueue()
        self._busy: queue.SimpleQueue[Path] = queue.SimpleQueue()
        self._remover_thread: threading.Thread | None = None

    def remove(self, path: Path) -> None:
        if self._remover_thread is None:
            self._remover_thread = threading.Thread(target=self._run, name="cgroup-remover",
                                                    daemon=True)
            self._remover_thread.start()
        self._pending.put(path)

    def retry_busy(self) -> None:
        for _ in range(self._busy.qsize()):  # not until empty: the thread may put them back
            self.remove(self._busy.get_nowait())

    def finish(self) -> None:
        """Remove what is pending and stop the thread."""
        if self._remover_thread is not None:
            self._pending.put(None)
            self._remover_thread.join()
            self._remover_thread = None

    def _run(self) -> None:
        while (path := self._pending.get()) is not None:
            try:
                path.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                self._busy.put(path)


def choose_enforcement(mode: str) -> MemoryEnforcement:
    """The enforcement for `mode` ("auto", "cgroup" or "watchdog"), with a pids cgroup per
    instance wherever the pids controller can be used.

    Raises OSError when "cgroup" is asked for and no memory cgroup can be created here.
    """
    pids_parent = _pids_parent()
    if mode != "watchdog":
        for layout, own_dir in _candidate_cgroups("memory"):
            try:
                parent = _make_parent(own_dir, layout, "memory")
            except OSError:
                continue
            return MemoryEnforcement(parent, layout, pids_parent)
        if mode == "cgroup":
            raise OSError("no writable memory cgroup (v2 with the memory controller, or v1)")
    return MemoryEnforcement(None, None, pids_parent)


def _pids_parent() -> Path | None:
    for layout, own_dir in _candidate_cgroups("pids"):
        try:
            return _make_parent(own_dir, layout, "pids")
        except OSError:
            continue
    return None


def _candidate_cgroups(controller: str) -> Iterable[tuple[CgroupLayout, Path]]:
    """Our own cgroup directory in each mounted hierarchy that has the controller."""
    own_paths = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        own_paths[controllers] = path.lstrip("/")
    for mount_point, fstype, options in _cgroup_mounts():
        if fstype == "cgroup2" and "" in own_paths:
            own_dir = Path(mount_point) / own_paths[""]
            if controller in _read(own_dir / "cgroup.controllers").split():
                yield V2, own_dir
        elif fstype == "cgroup" and controller in options.split(","):
            for controllers, path in own_paths.items():
                if controller in controllers.split(","):
                    yield V1, Path(mount_point) / path


def _cgroup_mounts() -> Iterable[tuple[str, str, str]]:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        separator = fields.index("-")
        mount_point, fstype, super_options = fields[4], fields[separator + 1], fields[-1]
        if fstype in ("cgroup", "cgroup2"):
            yield mount_point, fstype, super_options


def _make_parent(own_dir: Path, layout: CgroupLayout, controller: str) -> Path:
    _remove_stale_parents(own_dir)
    if layout.version == 2:
        _enable_controller(own_dir, controller)
    parent = own_dir / f"{_CGROUP_PREFIX}{os.getpid()}"
    parent.mkdir(exist_ok=True)
    if layout.version == 2:
        _enable_controller(parent, controller)
    elif controller == "memory":
        _write_if_present(parent / "memory.use_hierarchy", "1")
    return parent


def _enable_controller(directory: Path, controller: str) -> None:
    if controller not in _read(directory / "cgroup.subtree_control").split():
        (directory / "cgroup.subtree_control").write_text(f"+{controller}")


def _remove_stale_parents(own_dir: Path) -> None:
    """Directories left by a supervisor that was SIGKILLed: what still runs there dies."""
    for stale in own_dir.glob(f"{_CGROUP_PREFIX}*"):
        pid = stale.name.removeprefix(_CGROUP_PREFIX)
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            for procs in stale.glob("*/cgroup.procs"):
                _kill(int(member) for member in _read(procs).split())
            _remove_cgroup_tree(stale)


def _remove_cgroup_tree(path: Path) -> None:
    for child in path.iterdir():
        if child.is_dir():
            try:
                child.rmdir()
            except OSError:
                pass
    try:
        path.rmdir()
    except OSError:
        pass


def _joining(cgroup_dirs: list[Path], argv: list[str]) -> list[str]:
    """`argv`, started through a shell that first moves itself into the cgroups.

    The worker must be in its cgroups before its interpreter allocates anything, and a shell
    keeps the spawn a vfork+exec: a preexec_fn would force a fork of the whole supervisor.
    """
    if not cgroup_dirs:
        return argv
    joins = " && ".join(f'echo $$ > "{d / "cgroup.procs"}"' for d in cgroup_dirs)
    return ["/bin/sh", "-c", f'{joins} && exec "$@"', "sh", *argv]


def _members(cgroup_dirs: list[Path]) -> set[int]:
    members: set[int] = set()
    for directory in cgroup_dirs:
        try:
            members.update(int(pid) for pid in (directory / "cgroup.procs").read_text().split())
        except (OSError, ValueError):
            pass
    return members


def _rmdir_quietly(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def _kill(pids: Iterable[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _write_if_present(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError:
        pass


def become_subreaper() -> bool:
    """Adopt orphaned descendants (PR_SET_CHILD_SUBREAPER) instead of letting init have them."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1) == 0
    except (OSError, AttributeError):
        return False


class OrphanReaper:
    """Kills and reaps processes that outlived their instance.

    The supervisor is a child subreaper (PR_SET_CHILD_SUBREAPER): a process whose parent dies
    anywhere below it, such as a daemon that double-forked out of a worker's session, becomes its
    child instead of init's. Any child that is not a live worker and not in a live instance's
    cgroup is such an orphan; it is killed and reaped, so nothing a function started outlives it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, own_children: set[int]) -> None:
        self._loop = loop
        # Children that are the supervisor's own helpers, never orphans (the guard).
        self._own_children = own_children
        self._reaping: set[int] = set()

    def has_strays(self, workers: set[int]) -> bool:
        """Whether a child of ours is neither one of `workers` nor a helper nor being reaped:
        an orphan, or a daemon out of a live instance. Most instance deaths leave none, and this
        look costs one read of the kernel's list where sweep() needs a pass over /proc."""
        return any(pid not in workers and pid not in self._reaping
                   and pid not in self._own_children for pid in _own_children())

    def sweep(self, children: ChildrenMap, keep: set[int]) -> None:
        """Kill (with its tree) and reap every child of ours whose pid is not in `keep`."""
        for pid in children.get(os.getpid(), ()):
            if pid not in keep and pid not in self._reaping and pid not in self._own_children:
                self._kill_and_reap(pid, children)

    def reap_exited(self, keep: set[int]) -> None:
        """Reap children of ours that have exited, other than `keep` (workers, whose exit their
        instance collects): a daemon that ends on its own would stay a zombie otherwise."""
        for pid in _own_children():
            if pid not in keep and pid not in self._reaping and pid not in self._own_children \
                    and _is_zombie(pid):
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass

    def _kill_and_reap(self, pid: int, children: ChildrenMap) -> None:
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            return
        _kill([*descendants(pid, children), pid])
        self._reaping.add(pid)
        self._loop.add_reader(pidfd, self._reap, pid, pidfd)

    def _reap(self, pid: int, pidfd: int) -> None:
        self._loop.remove_reader(pidfd)
        os.close(pidfd)
        self._reaping.discard(pid)
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def _own_children() -> list[int]:
    """Our direct children: from the kernel's list where it keeps one, else from all of /proc."""
    me = os.getpid()
    try:
        with open(f"/proc/{me}/task/{me}/children", "rb") as listed:
            return [int(pid) for pid in listed.read().split()]
    except OSError:
        return children_map().get(me, [])


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rpartition(b")")[2].split()[0] == b"Z"
    except (OSError, IndexError):
        return False
