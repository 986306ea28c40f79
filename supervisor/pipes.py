"""Reads from a worker's pipes into one reused buffer.

os.read(fd, n) allocates n bytes for every read and shrinks them to what came. For the
supervisor's many small reads (a reply frame of a hundred bytes, a line of output) that is a
64 KiB malloc and a realloc each: time on every call, and, mixed with longer-lived allocations,
a fragmented heap whose RSS creeps up for minutes under load. Reading into one preallocated
buffer costs neither. The event loop's single thread makes one buffer enough: each caller is
done with what it read before the next read.
"""

from __future__ import annotations

import os

READ_BYTES = 64 * 1024
_buffer = bytearray(READ_BYTES)
_view = memoryview(_buffer)


def read(fd: int) -> memoryview:
    """What `fd` holds now, up to READ_BYTES (empty at end of file), valid until the next read.

    Raises what os.read raises (BlockingIOError when nothing is waiting).
    """
    # Not `_view[:os.readv(...)]`: compiled by mypyc (setup.py), a slice's bound is evaluated
    # twice, and the second read blocks or loses what the first took.
    size = os.readv(fd, (_buffer,))
    return _view[:size]
