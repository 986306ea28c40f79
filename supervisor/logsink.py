"""Where the log goes: stderr, written without ever blocking the supervisor.

A log reader that stalls (stderr on a pipe nobody drains, a wedged log shipper) must not stall
serving: a blocking write into a full pipe would freeze the event loop, and with it every call
and /healthz. A destination that fails (a full disk, a closed pipe) must cost nothing either.

So the sink writes through its own non-blocking descriptor and keeps what the destination has
not taken yet in a bounded buffer, sent as soon as the destination can take more. Beyond the
bound, whole records are dropped and counted; when writing resumes, one line says how many were
lost. A failing write drops what it carried and is counted the same way, never raised.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import stat

# What may wait for a slow destination before records are dropped.
MAX_BUFFERED_BYTES = 1024 * 1024


class LogSink:
    """Non-blocking, bounded writes of log bytes to one file descriptor."""

    def __init__(self, fd: int = 2) -> None:
        self._fd, self._socket = _non_blocking_writer(fd)
        self._unsent = bytearray()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting_to_write = False
        # Lost since the last notice (reported once writing resumes), and in all.
        self._lost_lines = 0
        self._lost_bytes = 0
        self.dropped_lines = 0

    def attach(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Send buffered bytes from this loop as the destination takes them; None: detach."""
        self._stop_waiting()
        self._loop = loop
        if loop is not None and self._unsent:
            self._wait_to_write()

    def write(self, data: bytes, lines: int) -> None:
        """Send `lines` log lines, or buffer them; drop them if the buffer is full."""
        if self._unsent:
            if len(self._unsent) + len(data) > MAX_BUFFERED_BYTES:
                self._lose(lines, len(data))
            else:
                self._unsent += data
            return
        written = self._send(data, lines)
        if written is None:
            return
        if written < len(data):
            self._unsent += memoryview(data)[written:]
            self._wait_to_write()
        elif self._lost_lines:
            self._report_losses()

    def drain(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` for the buffered bytes to go out (at exit); drop the rest."""
        self._stop_waiting()
        poller = select.poll()
        poller.register(self._fd, select.POLLOUT)
        while self._unsent and poller.poll(timeout_s * 1000):
            self._send_unsent()
            timeout_s = 0.05  # once moving, give up only when the destination stalls again
        if self._unsent:
            self._lose(self._unsent.count(b"\n"), len(self._unsent))
            self._unsent.clear()

    def _send(self, data: bytes | bytearray, lines: int) -> int | None:
        """Write what the destination takes now; None when the write failed (data lost)."""
        try:
            if self._socket is not None:
                return self._socket.send(data, socket.MSG_DONTWAIT)
            return os.write(self._fd, data)
        except BlockingIOError:
            return 0
        except OSError:
            self._lose(lines, len(data))
            return None

    def _send_unsent(self) -> None:
        written = self._send(self._unsent, self._unsent.count(b"\n"))
        if written is None:
            self._unsent.clear()
            return
        del self._unsent[:written]
        if not self._unsent and self._lost_lines:
            self._report_losses()

    def _on_writable(self) -> None:
        self._send_unsent()
        if not self._unsent:
            self._stop_waiting()

    def _wait_to_write(self) -> None:
        if self._loop is not None and not self._waiting_to_write:
            self._loop.add_writer(self._fd, self._on_writable)
            self._waiting_to_write = True

    def _stop_waiting(self) -> None:
        if self._waiting_to_write and self._loop is not None:
            self._loop.remove_writer(self._fd)
        self._waiting_to_write = False

    def _lose(self, lines: int, size: int) -> None:
        self._lost_lines += lines
        self._lost_bytes += size
        self.dropped_lines += lines

    def _report_losses(self) -> None:
        notice = (f"sfsupervisor: {self._lost_lines} log line(s) ({self._lost_bytes} bytes) were "
                  "dropped: the log destination did not take them in time or failed\n").encode()
        self._lost_lines = self._lost_bytes = 0
        self.write(notice, 1)


def _non_blocking_writer(fd: int) -> tuple[int, socket.socket | None]:
    """A descriptor for writing to `fd` that never blocks, and the socket object if it is one.

    Setting O_NONBLOCK on stderr itself would change it for every process sharing it (the shell
    that started us, a `2>&1` stdout), so pipes and terminals are opened anew through /proc,
    which gives a description of our own; a socket (journald's stderr) cannot be opened that way
    but takes a per-call MSG_DONTWAIT. Files and devices such as /dev/null never block.
    """
    mode = os.fstat(fd).st_mode
    if stat.S_ISSOCK(mode):
        own_socket = socket.socket(fileno=os.dup(fd))
        return own_socket.fileno(), own_socket
    if stat.S_ISFIFO(mode) or os.isatty(fd):
        try:
            return os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC), None
        except OSError:
            # Without /proc only the shared description can be made non-blocking; never
            # blocking the supervisor matters more than the other writers' mode.
            os.set_blocking(fd, False)
    return fd, None
