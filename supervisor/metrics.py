"""Prometheus metrics: plain counters on the hot path, the text format rendered per scrape.

A call adds to a dict entry and two bucket arrays; everything else (the pool's state, the HTTP
layer's counters, the log's dropped lines) is read when /metrics is scraped. Rendering the text
format here, rather than through a client library's registry, keeps a call's share to a few
additions.
"""

from __future__ import annotations

import collections
from bisect import bisect_left
from collections.abc import Callable, Iterable

from supervisor.calls import Call, Ending
from supervisor.http11 import HttpStats
from supervisor.instance import State
from supervisor.logs import Log
from supervisor.pool import Pool

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
# How a call ended, as the metrics name it.
OUTCOMES = ("ok", "error", "timeout", "memory", "crash", "rejected", "cancelled")
OUTCOME_OF_ENDING = {
    Ending.OK: "ok",
    Ending.FUNCTION_ERROR: "error",
    Ending.INIT_ERROR: "error",
    Ending.MALFORMED: "error",
    Ending.RUNTIME_ERROR: "error",
    Ending.TIMEOUT: "timeout",
    Ending.MEMORY: "memory",
    Ending.CRASH: "crash",
    Ending.PROTOCOL_ERROR: "crash",
    Ending.REJECTED: "rejected",
    Ending.SHUTDOWN: "rejected",
    Ending.CANCELLED: "cancelled",
}
# What the HTTP layer counts on its own (http11.HttpStats), as label values.
HTTP_EVENTS = ("bad_requests", "head_too_large", "body_too_large", "read_timeouts",
               "keepalive_timeouts", "write_timeouts", "disconnects", "app_errors")
_DURATION_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                       10.0, 30.0, 60.0)
_WAIT_BUCKETS_S = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)

Sample = tuple[str, dict[str, str], float]


class Histogram:
    """Counts per bucket (not cumulative) and the sum of the observed values."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # a bucket counts values <= its bound
        self.total += value

    def samples(self, name: str, labels: dict[str, str]) -> Iterable[Sample]:
        cumulative = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cumulative += count
            le = "+Inf" if bound == float("inf") else repr(bound)
            yield f"{name}_bucket", {**labels, "le": le}, cumulative
        yield f"{name}_count", labels, cumulative
        yield f"{name}_sum", labels, self.total


class Metrics:
    """The supervisor's counters, and the scrape that renders them with the pool's state."""

    content_type = CONTENT_TYPE

    def __init__(self, function: str, pool: Pool, log: Log) -> None:
        self._function = function
        self._pool = pool
        self._log = log
        self.calls = dict.fromkeys(OUTCOMES, 0)
        self.duration = Histogram(_DURATION_BUCKETS_S)
        self.queue_wait = Histogram(_WAIT_BUCKETS_S)
        self._http_stats: HttpStats | None = None
        self._open_connections: Callable[[], int] = lambda: 0

    def watch_http(self, stats: HttpStats, open_connections: Callable[[], int]) -> None:
        """Report the HTTP layer's counters too."""
        self._http_stats = stats
        self._open_connections = open_connections

    def call_ended(self, call: Call, outcome: str) -> None:
        """Count a call by outcome; time it if it reached an instance."""
        self.calls[outcome] += 1
        dispatched_at = call.dispatched_at
        if dispatched_at is not None:
            self.queue_wait.observe(dispatched_at - call.arrived_at)
            finished_at = call.finished_at
            if finished_at is not None:
                self.duration.observe(finished_at - dispatched_at)

    def count_refusal(self) -> None:
        """A request refused before it became a call (the queue is full, bad parameters)."""
        self.calls["rejected"] += 1

    def render(self) -> bytes:
        """The Prometheus text format (version 0.0.4)."""
        return "".join(self._families()).encode()

    def _families(self) -> Iterable[str]:
        function = {"function": self._function}
        stats = self._http_stats
        calls = dict(self.calls)
        if stats is not None:  # a body refused unread was refused as a call would have been
            calls["rejected"] += stats.body_too_large
        yield _family("sfsupervisor_calls_total", "counter", "Calls by how they ended.",
                      (("sfsupervisor_calls_total", {**function, "outcome": outcome}, count)
                       for outcome, count in calls.items()))
        yield _family("sfsupervisor_call_duration_seconds", "histogram",
                      "Time calls ran on an instance.",
                      self.duration.samples("sfsupervisor_call_duration_seconds", function))
        yield _family("sfsupervisor_queue_wait_seconds", "histogram",
                      "Time calls waited for a free instance.",
                      self.queue_wait.samples("sfsupervisor_queue_wait_seconds", function))
        yield from self._pool_families(function)
        yield _family("sfsupervisor_log_dropped_lines_total", "counter",
                      "Log lines lost: the log destination did not take them in time, or failed.",
                      [("sfsupervisor_log_dropped_lines_total", function,
                        self._log.dropped_lines)])
        if stats is not None:
            yield from self._http_families(function, stats)

    def _pool_families(self, function: dict[str, str]) -> Iterable[str]:
        pool = self._pool
        yield _family("sfsupervisor_queue_length", "gauge", "Calls waiting for a free instance.",
                      [("sfsupervisor_queue_length", function, pool.queue_length)])
        instances = pool.instances()
        states = collections.Counter(instance.state for instance in instances)
        yield _family("sfsupervisor_instances", "gauge", "Instances by state.",
                      (("sfsupervisor_instances", {**function, "state": state.value},
                        states[state]) for state in State))
        yield _family("sfsupervisor_instance_restarts_total", "counter",
                      "Instances replaced, by why they ended.",
                      (("sfsupervisor_instance_restarts_total", {**function, "reason": reason},
                        count) for reason, count in sorted(pool.restarts.items())))
        yield _family("sfsupervisor_instance_memory_bytes", "gauge",
                      "Current memory of each live instance (its whole tree).",
                      (("sfsupervisor_instance_memory_bytes",
                        {**function, "instance": str(instance.id)},
                        instance.memory.current_bytes())
                       for instance in instances
                       if instance.state in (State.STARTING, State.IDLE, State.BUSY)))

    def _http_families(self, function: dict[str, str], stats: HttpStats) -> Iterable[str]:
        yield _family("sfsupervisor_http_connections_total", "counter",
                      "HTTP connections accepted.",
                      [("sfsupervisor_http_connections_total", function, stats.connections)])
        yield _family("sfsupervisor_http_connections", "gauge", "HTTP connections open.",
                      [("sfsupervisor_http_connections", function, self._open_connections())])
        yield _family("sfsupervisor_http_events_total", "counter",
                      "What the HTTP layer answered or ended on its own: malformed requests "
                      "(400), heads (431) or bodies (413) over the limits, timeouts, clients "
                      "gone before their answer, failures answered 500.",
                      (("sfsupervisor_http_events_total", {**function, "event": event},
                        getattr(stats, event)) for event in HTTP_EVENTS))


def _family(name: str, kind: str, help_text: str, samples: Iterable[Sample]) -> str:
    lines = [f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n"]
    lines += [f"{sample}{{{_labels(labels)}}} {_number(value)}\n"
              for sample, labels, value in samples]
    return "".join(lines)


def _labels(labels: dict[str, str]) -> str:
    return ",".join(f'{key}="{_escape(value)}"' for key, value in labels.items())


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return repr(float(value))
