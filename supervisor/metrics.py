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
from supervisor.host import UNLIMITED, Host
from supervisor.http11 import HttpStats
from supervisor.instance import Instance, State
from supervisor.logs import Log

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


class FunctionCounters:
    """One function's call counters, added to on the hot path."""

    __slots__ = ("calls", "duration", "queue_wait")

    def __init__(self) -> None:
        self.calls = dict.fromkeys(OUTCOMES, 0)
        self.duration = Histogram(_DURATION_BUCKETS_S)
        self.queue_wait = Histogram(_WAIT_BUCKETS_S)

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


class Metrics:
    """Every function's counters, and the scrape that renders them with the pools' state.

    `server_function` names the function the server-wide series (HTTP layer, log) are labelled
    with in single-function mode; with many functions they carry no function label.
    """

    content_type = CONTENT_TYPE

    def __init__(self, host: Host, log: Log, server_function: str | None) -> None:
        self._host = host
        self._log = log
        self._server_labels = {"function": server_function} if server_function else {}
        self._counters: dict[str, FunctionCounters] = {}
        self._http_stats: HttpStats | None = None
        self._open_connections: Callable[[], int] = lambda: 0

    def watch_http(self, stats: HttpStats, open_connections: Callable[[], int]) -> None:
        """Report the HTTP layer's counters too."""
        self._http_stats = stats
        self._open_connections = open_connections

    def of(self, function: str) -> FunctionCounters:
        """The counters of one function."""
        counters = self._counters.get(function)
        if counters is None:
            counters = self._counters[function] = FunctionCounters()
        return counters

    def render(self) -> bytes:
        """The Prometheus text format (version 0.0.4)."""
        return "".join(self._families()).encode()

    def _families(self) -> Iterable[str]:
        functions = sorted(set(self._counters) | set(self._host.pools))
        counters = {name: self.of(name) for name in functions}
        stats = self._http_stats
        yield _family("sfsupervisor_calls_total", "counter", "Calls by how they ended.",
                      (("sfsupervisor_calls_total", {"function": name, "outcome": outcome},
                        count + self._unread_refusals(name, outcome))
                       for name in functions for outcome, count in counters[name].calls.items()))
        yield _family("sfsupervisor_call_duration_seconds", "histogram",
                      "Time calls ran on an instance.",
                      (sample for name in functions for sample in counters[name].duration.samples(
                          "sfsupervisor_call_duration_seconds", {"function": name})))
        yield _family("sfsupervisor_queue_wait_seconds", "histogram",
                      "Time calls waited for a free instance.",
                      (sample for name in functions
                       for sample in counters[name].queue_wait.samples(
                           "sfsupervisor_queue_wait_seconds", {"function": name})))
        yield from self._pool_families()
        yield _family("sfsupervisor_log_dropped_lines_total", "counter",
                      "Log lines lost: the log destination did not take them in time, or failed.",
                      [("sfsupervisor_log_dropped_lines_total", self._server_labels,
                        self._log.dropped_lines)])
        if stats is not None:
            yield from self._http_families(self._server_labels, stats)

    def _unread_refusals(self, function: str, outcome: str) -> int:
        """A body refused unread (413) was refused as a call would have been: in single-function
        mode it counts as the function's rejected call."""
        stats = self._http_stats
        if stats is None or outcome != "rejected" or \
                self._server_labels.get("function") != function:
            return 0
        return stats.body_too_large

    def _pool_families(self) -> Iterable[str]:
        pools = sorted(self._host.pools.values(), key=lambda pool: pool.name)
        yield _family("sfsupervisor_queue_length", "gauge", "Calls waiting for a free instance.",
                      (("sfsupervisor_queue_length", {"function": pool.name}, pool.queue_length)
                       for pool in pools))
        yield _family("sfsupervisor_instances", "gauge", "Instances by state.",
                      (("sfsupervisor_instances", {"function": pool.name, "state": state.value},
                        count) for pool in pools
                       for state, count in _states(pool.instances())))
        yield _family("sfsupervisor_instance_restarts_total", "counter",
                      "Instances replaced, by why they ended.",
                      (("sfsupervisor_instance_restarts_total",
                        {"function": pool.name, "reason": reason}, count)
                       for pool in pools for reason, count in sorted(pool.restarts.items())))
        yield _family("sfsupervisor_instance_memory_bytes", "gauge",
                      "Current memory of each live instance (its whole tree).",
                      (("sfsupervisor_instance_memory_bytes",
                        {"function": pool.name, "instance": str(instance.id)},
                        instance.memory.current_bytes())
                       for pool in pools for instance in pool.instances()
                       if instance.state in (State.STARTING, State.IDLE, State.BUSY)))
        host = self._host
        if host.max_instances < UNLIMITED:
            yield _family("sfsupervisor_host_instances", "gauge",
                          "Instances of all functions counted against the host's budget.",
                          [("sfsupervisor_host_instances", {}, host.instances)])
            yield _family("sfsupervisor_host_memory_bytes", "gauge",
                          "The memory limits of those instances, summed.",
                          [("sfsupervisor_host_memory_bytes", {}, host.memory_mb << 20)])

    def _http_families(self, labels: dict[str, str], stats: HttpStats) -> Iterable[str]:
        yield _family("sfsupervisor_http_connections_total", "counter",
                      "HTTP connections accepted.",
                      [("sfsupervisor_http_connections_total", labels, stats.connections)])
        yield _family("sfsupervisor_http_connections", "gauge", "HTTP connections open.",
                      [("sfsupervisor_http_connections", labels, self._open_connections())])
        yield _family("sfsupervisor_http_events_total", "counter",
                      "What the HTTP layer answered or ended on its own: malformed requests "
                      "(400), heads (431) or bodies (413) over the limits, timeouts, clients "
                      "gone before their answer, failures answered 500.",
                      (("sfsupervisor_http_events_total", {**labels, "event": event},
                        getattr(stats, event)) for event in HTTP_EVENTS))


def _states(instances: list[Instance]) -> Iterable[tuple[State, int]]:
    counted = collections.Counter(instance.state for instance in instances)
    return ((state, counted[state]) for state in State)


def _family(name: str, kind: str, help_text: str, samples: Iterable[Sample]) -> str:
    lines = [f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n"]
    lines += [f"{sample}{_labels(labels)} {_number(value)}\n"
              for sample, labels, value in samples]
    return "".join(lines)


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{key}="{_escape(value)}"' for key, value in labels.items()) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return repr(float(value))
