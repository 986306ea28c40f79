"""Blocking frame I/O over the worker's private pipe pair."""

from __future__ import annotations

import os
from typing import Any

from worker import protocol

_READ_BYTES = 64 * 1024


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
        self._fed_bytes = 0  # with the unpacker's tell(): whether bytes wait in its buffer
        # Reads land in one reused buffer (the unpacker copies what it is fed): os.read would
        # allocate _READ_BYTES and shrink them to the frame's size on every call.
        self._buffer = bytearray(_READ_BYTES)
        self._view = memoryview(self._buffer)

    def receive(self) -> list[Any] | None:
        """The next frame, or None once the supervisor has closed its end."""
        unpacker = self._unpacker
        # The supervisor sends one call at a time, so the buffer is mostly empty here: reading
        # first spares a failed decode, and its StopIteration, per call.
        while True:
            if self._fed_bytes != unpacker.tell():
                try:
                    return next(unpacker)
                except StopIteration:
                    pass
            size = os.readv(self._read_fd, (self._buffer,))
            if not size:
                return None
            unpacker.feed(self._view[:size])
            self._fed_bytes += size

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
