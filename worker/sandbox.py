"""Sealing a worker before the user's code runs: its own namespaces, /tmp and uid.

The supervisor starts every worker as a plain process (a fresh interpreter, no fork of the
supervisor: its loop must not block) and says in the INIT frame how to seal it. The worker does
so itself, before it imports anything of the user's, with the privileges it started with:

- `ns` (root, or any user where unprivileged user namespaces are allowed): new PID, mount, IPC
  and UTS namespaces (and a network namespace with only loopback, if asked). Only a child
  enters a new PID namespace, so the process the supervisor started stays outside as a keeper,
  its child is the namespace's init (it reaps, and its death ends the namespace), and the
  init's child serves. In the new mount namespace /proc shows only the instance's processes,
  /tmp and /dev/shm are the instance's own tmpfs (capped, gone with the instance), and the code
  root is read-only.
- `uid` (root): the worker becomes its instance's own uid and gid, with no supplementary groups.
- `none`: neither; a warning at the supervisor's start says what is not isolated.

In every tier the serving process then sets no_new_privs (no setuid binary gives privileges
back), makes itself non-dumpable (a process of the same uid cannot read its memory or its
environment) and arms its parent-death signal again (a uid change clears it).

Run as `python -P -m worker.sandbox PROBE_JSON` it is the supervisor's startup probe: it seals
itself as a worker would, then reports whether the interpreter's files and the code root are
readable to the sealed process.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import resource
import signal
import struct
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p)

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
# statvfs flags of a mount that a remount inside a user namespace must keep (they are locked).
_LOCKED_FLAGS = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC
_PRIVATE_MOUNTS = ("/tmp", "/dev/shm")
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 1, 4, 38
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1
_CAPABILITY_VERSION_3 = 0x20080522


class SandboxError(Exception):
    """The worker could not seal itself as asked."""


def enter(spec: dict[str, Any], keep_fds: Sequence[int]) -> None:
    """Seal this worker as `spec` says; returns in the process that is to serve.

    `spec`: {"tier": "ns" | "uid" | "none", "uid": int | None, "gid": int | None,
    "tmp_bytes": int, "no_network": bool, "code_root": str, "nproc": int | None}.
    `keep_fds` are the descriptors the serving process needs (the frame pipes): the keeper
    processes of the ns tier close them, so that the supervisor sees end of file when the
    serving process dies.
    """
    tier = spec["tier"]
    if tier == "ns":
        _enter_namespaces(spec, keep_fds)
    if spec["uid"] is not None and os.getuid() == 0:
        _become(spec["uid"], spec["gid"])
    if tier == "ns" and os.getuid() != 0:
        _drop_capabilities()
    if spec.get("nproc"):
        resource.setrlimit(resource.RLIMIT_NPROC, (spec["nproc"], spec["nproc"]))
    seal()


def seal() -> None:
    """no_new_privs, non-dumpable, and death with the parent: every tier, every time."""
    for option, value in ((PR_SET_NO_NEW_PRIVS, 1), (PR_SET_DUMPABLE, 0),
                          (PR_SET_PDEATHSIG, signal.SIGKILL)):
        _libc.prctl(option, value, 0, 0, 0)


# -- namespaces --------------------------------------------------------------------------------


def _enter_namespaces(spec: dict[str, Any], keep_fds: Sequence[int]) -> None:
    flags = CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS
    if spec["no_network"]:
        flags |= CLONE_NEWNET
    outer_uid, outer_gid = os.getuid(), os.getgid()
    if outer_uid != 0:
        flags |= CLONE_NEWUSER
    _check(_libc.unshare(flags), "unshare")
    if flags & CLONE_NEWUSER:
        _map_ids(outer_uid, outer_gid)
    status_read, status_write = os.pipe()
    init = os.fork()
    if init:
        os.close(status_write)
        _keep(init, status_read)
    os.close(status_read)
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    _mount_private_view(spec, flags & CLONE_NEWUSER == 0)
    if spec["no_network"]:
        _bring_up_loopback()
    server = os.fork()
    if server:
        _close_all_but((status_write,))
        _be_init(server, status_write)
    os.close(status_write)


def _map_ids(uid: int, gid: int) -> None:
    """Inside a new user namespace, be the same uid and gid as outside (no root in there)."""
    with open("/proc/self/setgroups", "w") as setgroups:
        setgroups.write("deny")
    with open("/proc/self/uid_map", "w") as uid_map:
        uid_map.write(f"{uid} {uid} 1")
    with open("/proc/self/gid_map", "w") as gid_map:
        gid_map.write(f"{gid} {gid} 1")


def _mount_private_view(spec: dict[str, Any], as_root: bool) -> None:
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    # The private /tmp and /dev/shm would hide code, the interpreter or packages that live under
    # them (a checkout in /tmp): hold each such place by descriptor and bind it back in, read-only.
    hidden = _places_under(_PRIVATE_MOUNTS, [spec["code_root"], *_import_places()])
    held = {place: os.open(place, os.O_PATH | os.O_DIRECTORY) for place in hidden}
    way_in = {path: os.stat(path) for place in hidden for path in _directories_below(place)}
    owner = f",uid={spec['uid']},gid={spec['gid']}" if as_root and spec["uid"] is not None else ""
    size = f"size={spec['tmp_bytes']}"
    _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"{size},mode=0700{owner}")
    if os.path.isdir("/dev/shm"):
        _mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, f"{size},mode=1777")
    for path, status in sorted(way_in.items()):
        _recreate_directory(path, status, as_root)
    for place, fd in held.items():
        _bind_read_only(f"/proc/self/fd/{fd}", place)
        os.close(fd)
    _bind_read_only(spec["code_root"], spec["code_root"])
    # The working directory still points into the mounts beneath: look it up again by name.
    os.chdir(os.getcwd())


def _import_places() -> list[str]:
    """Where this interpreter may load code from: its own directory and every import path."""
    return [os.path.dirname(sys.executable), *sys.path]


def _places_under(mounts: Sequence[str], places: Sequence[str]) -> list[str]:
    """The existing directories of `places` below one of `mounts`, none inside another."""
    found = sorted({os.path.realpath(place) for place in places if place and os.path.isdir(place)})
    inside = [place for place in found if any(place.startswith(mount + "/") for mount in mounts)]
    return [place for place in inside
            if not any(place.startswith(other + "/") for other in inside)]


def _directories_below(place: str) -> list[str]:
    """The directories from its private mount down to `place` (/tmp/a/b → /tmp/a, /tmp/a/b)."""
    mount = next(mount for mount in _PRIVATE_MOUNTS if place.startswith(mount + "/"))
    parts = place[len(mount) + 1:].split("/")
    return [os.path.join(mount, *parts[:depth]) for depth in range(1, len(parts) + 1)]


def _recreate_directory(path: str, status: os.stat_result, as_root: bool) -> None:
    """The same directory in the new tmpfs, with the same owner and mode: the sandbox gets no
    way in that it did not have (a 0700 parent stays closed to the instance's uid)."""
    os.makedirs(path, exist_ok=True)
    if as_root:
        os.chown(path, status.st_uid, status.st_gid)
    os.chmod(path, status.st_mode & 0o7777)


def _bind_read_only(source: str, target: str) -> None:
    _mount(source, target, None, MS_BIND | MS_REC)
    kept = os.statvfs(target).f_flag & _LOCKED_FLAGS
    _mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | kept)


def _mount(source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    result = _libc.mount(_bytes(source), target.encode(), _bytes(fstype), flags, _bytes(data))
    _check(result, f"mount {fstype or 'bind'} on {target}")


def _bring_up_loopback() -> None:
    """A network namespace starts with loopback down: 127.0.0.1 should still work inside."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(probe, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(probe, _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))


def _keep(init: int, status_read: int) -> NoReturn:
    """The process the supervisor started: it stays outside the namespace and ends as the
    serving process ended, so that the supervisor sees the same exit code or signal."""
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)  # the serving process gets them (its group)
    _close_all_but((status_read,))
    _, init_status = _wait_for(init)
    served = os.read(status_read, 8)
    _end_as(int(served) if served else init_status)


def _be_init(server: int, status_write: int) -> NoReturn:
    """PID 1 of the instance: reap every orphan; when the serving process ends, pass on how it
    ended and leave, which ends every process left in the namespace."""
    while True:
        pid, status = _wait_for(-1)
        if pid == server:
            os.write(status_write, str(status).encode())
            os._exit(0)


def _wait_for(pid: int) -> tuple[int, int]:
    while True:
        try:
            return os.waitpid(pid, 0)
        except InterruptedError:
            continue


def _end_as(status: int) -> NoReturn:
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        if signum not in (signal.SIGKILL, signal.SIGSTOP):  # these have no handler to reset
            signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)


def _close_all_but(kept: Sequence[int]) -> None:
    low = 3
    for fd in sorted(kept):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 65536)


# -- identity ----------------------------------------------------------------------------------


def _become(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


def _drop_capabilities() -> None:
    """An unprivileged user namespace gives its creator every capability inside: give them up."""
    header = struct.pack("II", _CAPABILITY_VERSION_3, 0)
    _check(_libc.capset(header, bytes(24)), "capset")


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise SandboxError(f"{what}: {os.strerror(code)} ({errno.errorcode.get(code, code)})")


def _bytes(text: str | None) -> bytes | None:
    return None if text is None else text.encode()


# -- the startup probe -------------------------------------------------------------------------


def probe(spec: dict[str, Any]) -> dict[str, Any]:
    """Seal as a worker would; then what the sealed process cannot read, if anything."""
    import msgpack  # noqa: F401  (the worker's own dependency must be importable too)

    enter(spec, ())
    needed = [os.path.dirname(os.__file__), *_package_dirs(), spec["code_root"]]
    unreadable = [path for path in needed if not os.access(path, os.R_OK | os.X_OK)]
    return {"uid": os.getuid(), "pid": os.getpid(), "unreadable": unreadable}


def _package_dirs() -> list[str]:
    import site

    return [path for path in site.getsitepackages() if os.path.isdir(path)]


if __name__ == "__main__":
    import json

    try:
        print(json.dumps(probe(json.loads(sys.argv[1]))), flush=True)
    except (OSError, SandboxError) as exc:
        print(json.dumps({"error": str(exc)}), flush=True)
        sys.exit(1)
