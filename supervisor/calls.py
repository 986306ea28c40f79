"""A call on its way through the supervisor, and how it ended."""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass
from typing import Any


class Ending(enum.Enum):
    """How a call ended, from the runtime's point of view."""

    OK = "ok"  # the handler returned a value
    FUNCTION_ERROR = "error"  # the handler raised
    INIT_ERROR = "init_error"  # the entry point does not import
    UNSERIALIZABLE = "unserializable"  # the handler returned something JSON cannot carry
    TIMEOUT = "timeout"  # the call (or the import before it) ran past its deadline
    CRASH = "crash"  # the worker died mid-call
    MEMORY = "memory"  # the instance used more memory than its limit
    PROTOCOL_ERROR = "protocol_error"  # the worker sent bytes that are not a valid frame
    RUNTIME_ERROR = "runtime_error"  # the supervisor itself could not serve the call
    SHUTDOWN = "shutdown"  # the supervisor is stopping and will not run the call
    REJECTED = "rejected"  # too many calls in progress: the queue is full, or waited too long
    CANCELLED = "cancelled"  # the client went away while the call was waiting


@dataclass(frozen=True, slots=True)
class Outcome:
    """An ending and what came with it: the returned value, or the error object."""

    ending: Ending
    value: Any = None
    detail: str = ""


class Call:
    """One invocation: the event, and the timings the REPORT line is made of.

    Timings are time.perf_counter() readings: the loop's clock is too coarse for a REPORT.
    """

    __slots__ = (
        "arrived_at",
        "background",
        "dispatched_at",
        "event",
        "finished_at",
        "future",
        "held_bytes",
        "init_duration_s",
        "instance_id",
        "peak_kb",
        "queued_at",
        "request_id",
    )

    def __init__(self, request_id: str, event: Any, arrived_at: float,
                 future: asyncio.Future[Outcome], held_bytes: int = 0,
                 background: bool = False) -> None:
        self.request_id = request_id
        self.event = event
        self.arrived_at = arrived_at
        self.future = future
        # Memory the waiting call holds in the supervisor (its request body, in its forms).
        self.held_bytes = held_bytes
        # Nobody waits for its answer (?integration=async): once accepted, it must run.
        self.background = background
        self.dispatched_at: float | None = None
        self.finished_at: float | None = None
        self.init_duration_s: float | None = None
        self.instance_id: int | None = None
        self.peak_kb = 0
        self.queued_at: float | None = None

    def resolve(self, outcome: Outcome) -> None:
        """Hand the outcome to whoever awaits the call (once; later outcomes are ignored)."""
        if not self.future.done():
            self.future.set_result(outcome)
