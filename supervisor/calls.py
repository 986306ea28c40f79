"""A call on its way through the supervisor, and how it ended."""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, NamedTuple


class Ending(enum.Enum):
    """How a call ended, from the runtime's point of view."""

    OK = "ok"  # the handler returned a value (the worker's mapped response)
    FUNCTION_ERROR = "error"  # the handler raised
    INIT_ERROR = "init_error"  # the entry point does not import
    MALFORMED = "malformed"  # the handler returned something that is no platform response
    TIMEOUT = "timeout"  # the call (or the import before it) ran past its deadline
    CRASH = "crash"  # the worker died mid-call
    MEMORY = "memory"  # the instance used more memory than its limit
    PROTOCOL_ERROR = "protocol_error"  # the worker sent bytes that are not a valid frame
    RUNTIME_ERROR = "runtime_error"  # the supervisor itself could not serve the call
    SHUTDOWN = "shutdown"  # the supervisor is stopping and will not run the call
    REJECTED = "rejected"  # too many calls in progress: the queue is full, or waited too long
    CANCELLED = "cancelled"  # the client went away while the call was waiting


class Outcome(NamedTuple):
    """An ending and what came with it: the worker's response, or the error object.

    A named tuple rather than a dataclass: one is made per call, and a tuple is made cheaply.
    """

    ending: Ending
    value: Any = None
    detail: str = ""


class Call:
    """One invocation: the request as the worker gets it, and the timings of its REPORT line.

    `request` and `body` are the CALL frame's fields (worker/protocol.py). Timings are
    time.perf_counter() readings: the loop's clock is too coarse for a REPORT. The outcome goes
    to `on_done` once, from whatever settles the call (an instance, the pool); it must not
    raise, since those are in the middle of their own bookkeeping.
    """

    __slots__ = (
        "arrived_at",
        "background",
        "body",
        "dispatched_at",
        "finished_at",
        "held_bytes",
        "init_duration_s",
        "instance_id",
        "on_done",
        "outcome",
        "peak_kb",
        "queued_at",
        "request",
        "request_id",
    )

    def __init__(self, request_id: str, request: list[Any], body: bytes, arrived_at: float,
                 on_done: Callable[[Any, Outcome], None], held_bytes: int = 0,
                 background: bool = False) -> None:
        self.request_id = request_id
        self.request = request
        self.body = body
        self.arrived_at = arrived_at
        self.on_done = on_done
        # Memory the waiting call holds in the supervisor (its request).
        self.held_bytes = held_bytes
        # Nobody waits for its answer (?integration=async): once accepted, it must run.
        self.background = background
        self.outcome: Outcome | None = None
        self.dispatched_at: float | None = None
        self.finished_at: float | None = None
        self.init_duration_s: float | None = None
        self.instance_id: int | None = None
        self.peak_kb = 0
        self.queued_at: float | None = None

    def resolve(self, outcome: Outcome) -> None:
        """Hand the outcome to on_done (once; later outcomes are ignored)."""
        if self.outcome is None:
            self.outcome = outcome
            self.on_done(self, outcome)
