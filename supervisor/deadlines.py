"""One timer for the deadlines of every call in flight.

A timer armed when a call is sent and cancelled when it returns costs the event loop two heap
operations per call, for a timer that almost never fires. Instead each busy instance keeps its
call's deadline in an attribute (cleared when the call ends, with nothing to cancel), and one
timer is armed for the earliest deadline that may still be pending. When it fires, every
instance whose deadline has passed is told so, and the timer is armed again for the earliest
deadline left. Calls share one timeout, so a new call's deadline is almost always later than the
armed one and costs a comparison: the timer fires about once per timeout, and still exactly at
each deadline that is not met.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterable
from typing import Protocol

# The loop's timers have millisecond resolution and may fire that much early: a deadline this
# close is due.
DUE_WITHIN_S = 0.001


class Deadlined(Protocol):
    """An instance, as far as deadlines go."""

    call_deadline: float  # in the loop's time; math.inf while no call runs

    def deadline_passed(self) -> None: ...


class DeadlineSweep:
    """Tells instances when their call's deadline passes, from one timer."""

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 instances: Callable[[], Iterable[Deadlined]]) -> None:
        self._loop = loop
        self._instances = instances
        self._timer: asyncio.TimerHandle | None = None
        self._armed_for = math.inf

    def watch(self, deadline: float) -> None:
        """A call's deadline was set: make sure the timer fires by then."""
        if deadline < self._armed_for:
            if self._timer is not None:
                self._timer.cancel()
            self._armed_for = deadline
            self._timer = self._loop.call_at(deadline, self._sweep)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._armed_for = math.inf

    def _sweep(self) -> None:
        self._timer = None
        self._armed_for = math.inf
        due = self._loop.time() + DUE_WITHIN_S
        earliest = math.inf
        for instance in list(self._instances()):  # a deadline may change the set of instances
            deadline = instance.call_deadline
            if deadline <= due:
                instance.deadline_passed()
            elif deadline < earliest:
                earliest = deadline
        if earliest < math.inf:
            self.watch(earliest)
