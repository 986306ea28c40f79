"""The guard: when the supervisor dies, even by SIGKILL, nothing of its instances outlives it.

Workers die with the supervisor (PR_SET_PDEATHSIG), but a process a function detached into a
session of its own does not: nothing tells it. Its cgroup knows it, though. The guard is a small
process of its own, started once by the supervisor, that waits for end of file on a pipe whose
write end only the supervisor holds; the kernel closes it when the supervisor exits, whatever
the cause. Then the guard kills every process left in the supervisor's cgroups and removes them.

    python -P -m supervisor.guard CGROUP_DIR...

Each CGROUP_DIR is a per-supervisor directory holding one cgroup per instance.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

# Killing is repeated while members remain: a fork bomb may fork while we kill.
KILL_ROUNDS = 50
ROUND_PAUSE_S = 0.02


def start(directories: Sequence[Path]) -> tuple[int, int]:
    """Start a guard over these cgroup directories; returns its pid and the pipe's write end,
    which the supervisor keeps open (and never passes on) for as long as it lives."""
    read_end, write_end = os.pipe()
    try:
        guard = subprocess.Popen(
            [sys.executable, "-P", "-m", "supervisor.guard", *map(str, directories)],
            stdin=read_end, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            cwd="/", start_new_session=True,
        )
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    return guard.pid, write_end


def main() -> None:
    # Nothing a terminal or a session leader sends is meant for the guard.
    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGTSTP):
        signal.signal(signum, signal.SIG_IGN)
    directories = [Path(arg) for arg in sys.argv[1:]]
    while os.read(0, 4096):  # returns b"" once the supervisor's end is closed
        pass
    for directory in directories:
        empty(directory)


def empty(directory: Path) -> None:
    """Kill every process in the cgroups under `directory`, then remove them."""
    if not directory.is_dir():
        return  # the supervisor stopped cleanly and removed it
    _write(directory / "cgroup.kill", "1")  # cgroup v2 kills the whole subtree at once
    for _ in range(KILL_ROUNDS):
        members = _members(directory)
        if not members:
            break
        for pid in members:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(ROUND_PAUSE_S)
    for child in directory.iterdir():
        if child.is_dir():
            _rmdir(child)
    _rmdir(directory)


def _members(directory: Path) -> set[int]:
    members: set[int] = set()
    for procs in [directory / "cgroup.procs", *directory.glob("*/cgroup.procs")]:
        try:
            members.update(int(pid) for pid in procs.read_text().split())
        except (OSError, ValueError):
            pass
    return members


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError:
        pass


def _rmdir(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


if __name__ == "__main__":
    main()
