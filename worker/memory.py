"""The peak resident memory of this process during one call."""

from __future__ import annotations

import os
import resource


class PeakMemory:
    """Resets the kernel's RSS high-water mark before a call and reads it after.

    Writing "5" to /proc/self/clear_refs resets VmHWM to the current RSS (Linux 4.0+), so the
    mark read after the call is that call's own peak, not the process's lifetime maximum.
    Where /proc does not allow it, the lifetime maximum (ru_maxrss) is the best there is.
    """

    def __init__(self) -> None:
        try:
            self._clear_fd: int | None = os.open("/proc/self/clear_refs", os.O_WRONLY)
            self._status_fd: int | None = os.open("/proc/self/status", os.O_RDONLY)
        except OSError:
            self._clear_fd = self._status_fd = None
        for fd in (self._clear_fd, self._status_fd):
            if fd is not None:
                os.set_inheritable(fd, False)

    def reset(self) -> None:
        if self._clear_fd is not None:
            os.write(self._clear_fd, b"5")

    def peak_kb(self) -> int:
        if self._status_fd is not None:
            status = os.pread(self._status_fd, 4096, 0)
            start = status.find(b"VmHWM:")
            if start >= 0:
                return int(status[start + 6 : status.index(b"kB", start)])
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
