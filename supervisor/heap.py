"""The supervisor's heap over days of serving: glibc's allocator, kept from creeping.

The supervisor runs for weeks, and every call passes through it: thousands of short-lived
blocks a second (requests, frames, answers, log batches) among longer-lived ones (connections,
instances). glibc's allocator, left alone, lets the heap creep up in two ways, both measured by
the soak (`python -m benchmarks soak`):

- It raises its mmap threshold to the size of the largest mapped block freed so far (up to
  32 MB). After the first multi-megabyte body, such bodies are carved from the heap instead, and
  the holes they leave kept RSS growing for minutes (+29 % over 10 minutes, still rising). A
  fixed threshold turns the adjustment off. It is MMAP_THRESHOLD_BYTES, not glibc's default
  128 KiB: a mapped block costs a page fault per 4 KiB when it is filled and a TLB shootdown
  when it is unmapped, and at 128 KiB every megabyte-sized body paid that (the `payload`
  benchmark, 1 MB each way at 32 connections: 219-242 req/s and 4.1-4.5 ms of supervisor CPU
  per call, against 385-396 req/s and 1.9-2.0 ms at 4 MiB). Bodies up to 4 MiB reuse the heap;
  the holes they leave are what the trimmer returns.
- free() gives the heap's top back to the system as soon as more than 128 KiB are free there
  (M_TRIM_THRESHOLD). With megabyte bodies from the heap, the top grew and shrank by megabytes
  on every call: five brk() a call, and the pages faulted in again each time (`payload` at one
  connection: 244 req/s; a run of the full suite fell from 488 to 290 req/s when the bodies
  happened to lie at the top). The trim threshold is raised to the mmap threshold, so up to
  that much free memory stays at the top for the next body; the trimmer returns it within
  TRIM_EVERY_S if it is not used.
- Freed blocks inside the heap go back to the system only at its top. A long-lived block above
  them pins the pages below, so free memory inside the heap grows while what is in use does not
  (glibc's malloc_stats in a 5-minute soak: in use 6.9-9.0 MB throughout, free within the heap
  0.5 MB rising to 2.9 MB). malloc_trim(0) returns the free pages wherever they are; once every
  TRIM_EVERY_S it costs about a millisecond.

None of this exists outside glibc (musl, say): there the functions do nothing.
"""

from __future__ import annotations

import asyncio
import ctypes

# mallopt()'s parameters; the size from which a block gets its own mapping, and the free memory
# at the heap's top beyond which free() shrinks the heap.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024
TRIM_THRESHOLD_BYTES = MMAP_THRESHOLD_BYTES
TRIM_EVERY_S = 10.0


def _glibc() -> ctypes.CDLL | None:
    libc = ctypes.CDLL(None)
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def fix_thresholds() -> None:
    """Map every block of MMAP_THRESHOLD_BYTES or more, whatever was freed before, and keep up
    to TRIM_THRESHOLD_BYTES free at the heap's top."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)


class Trimmer:
    """Returns the heap's free pages to the system every TRIM_EVERY_S on a running loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._libc = _glibc()
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self._libc is not None:
            self._timer = self._loop.call_later(TRIM_EVERY_S, self._trim)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _trim(self) -> None:
        self._libc.malloc_trim(0)  # type: ignore[union-attr]
        self.start()
