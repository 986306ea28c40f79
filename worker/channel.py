"""Blocking frame I/O over the worker's private pipe pair."""

from __future__ import annotations

import os
from typing import Any

from worker import protocol

_READ_BYTES = 64 * 1024  # below malloc's mmap threshold: a read must not cost an mmap


class Channel:
    """Receives frames from the supervisor and sends frames back."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        # The user's subprocesses must not inherit these: a child holding the write end
        # would hide this worker's death from the supervisor.
        os.set_inheritable(read_fd, False)
        os.set_inheritable(write_fd, False)
        self._read_fd = read_fd
        self._write_fd = write_fd
        self._unpacker = protocol.unpacker(protocol.MAX_SUPERVISOR_FRAME_BYTES)

    def receive(self) -> list[Any] | None:
        """The next frame, or None once the supervisor has closed its end."""
        while True:
            try:
                return next(self._unpacker)
            except StopIteration:
                pass
            data = os.read(self._read_fd, _READ_BYTES)
            if not data:
                return None
            self._unpacker.feed(data)

    def send(self, frame: list[Any]) -> None:
        """Send one frame; raises protocol.NotSerializable before writing anything."""
        self.send_parts([protocol.pack(frame)])

    def send_parts(self, parts: list[bytes]) -> None:
        """Write one frame's buffers in order, as one gathered write when the pipe takes it."""
        if len(parts) == 1:
            written = os.write(self._write_fd, parts[0])
            if written == len(parts[0]):
                return
            views = [memoryview(parts[0])[written:]]
        else:
            views = [memoryview(part) for part in parts]
        while views:
            written = os.writev(self._write_fd, views)
            while views and written >= len(views[0]):
                written -= len(views.pop(0))
            if views:
                views[0] = views[0][written:]
