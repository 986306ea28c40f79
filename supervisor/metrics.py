"""Prometheus metrics: counters and histograms updated per call, pool state read per scrape."""

from __future__ import annotations

import collections
from collections.abc import Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from supervisor.calls import Call, Ending
from supervisor.instance import State
from supervisor.logs import Log
from supervisor.pool import Pool

# How a call ended, as the metrics name it.
OUTCOMES = ("ok", "error", "timeout", "memory", "crash", "rejected", "cancelled")
OUTCOME_OF_ENDING = {
    Ending.OK: "ok",
    Ending.FUNCTION_ERROR: "error",
    Ending.INIT_ERROR: "error",
    Ending.UNSERIALIZABLE: "error",
    Ending.RUNTIME_ERROR: "error",
    Ending.TIMEOUT: "timeout",
    Ending.MEMORY: "memory",
    Ending.CRASH: "crash",
    Ending.PROTOCOL_ERROR: "crash",
    Ending.REJECTED: "rejected",
    Ending.SHUTDOWN: "rejected",
    Ending.CANCELLED: "cancelled",
}
_DURATION_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                       10.0, 30.0, 60.0)
_WAIT_BUCKETS_S = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)


class Metrics:
    """The supervisor's metrics registry and the hot-path hooks that feed it."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, function: str, pool: Pool, log: Log) -> None:
        disable_created_metrics()  # a *_created series per counter is noise for a scrape
        self.registry = CollectorRegistry(auto_describe=True)
        calls = Counter("sfsupervisor_calls", "Calls by how they ended.",
                        ["function", "outcome"], registry=self.registry)
        # Label lookups cost more than the increments: bind every child once.
        self._calls = {outcome: calls.labels(function, outcome) for outcome in OUTCOMES}
        self._duration = Histogram(
            "sfsupervisor_call_duration_seconds", "Time calls ran on an instance.",
            ["function"], buckets=_DURATION_BUCKETS_S, registry=self.registry,
        ).labels(function)
        self._queue_wait = Histogram(
            "sfsupervisor_queue_wait_seconds", "Time calls waited for a free instance.",
            ["function"], buckets=_WAIT_BUCKETS_S, registry=self.registry,
        ).labels(function)
        self.registry.register(_PoolCollector(function, pool, log))

    def call_ended(self, call: Call, outcome: str) -> None:
        """Count a call by outcome; time it if it reached an instance."""
        self._calls[outcome].inc()
        if call.dispatched_at is not None:
            self._queue_wait.observe(call.dispatched_at - call.arrived_at)
            if call.finished_at is not None:
                self._duration.observe(call.finished_at - call.dispatched_at)

    def count_refusal(self) -> None:
        """A request refused before it became a call (too large, bad parameters)."""
        self._calls["rejected"].inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _PoolCollector:
    """Reads the pool's state when Prometheus scrapes, so the hot path updates nothing."""

    def __init__(self, function: str, pool: Pool, log: Log) -> None:
        self._function = function
        self._pool = pool
        self._log = log

    def collect(self) -> Iterator[Metric]:
        function = self._function
        queue = GaugeMetricFamily("sfsupervisor_queue_length",
                                  "Calls waiting for a free instance.", labels=["function"])
        queue.add_metric([function], self._pool.queue_length)
        yield queue

        instances = self._pool.instances()
        states = collections.Counter(instance.state for instance in instances)
        by_state = GaugeMetricFamily("sfsupervisor_instances", "Instances by state.",
                                     labels=["function", "state"])
        for state in State:
            by_state.add_metric([function, state.value], states[state])
        yield by_state

        restarts = CounterMetricFamily("sfsupervisor_instance_restarts",
                                       "Instances replaced, by why they ended.",
                                       labels=["function", "reason"])
        for reason, count in sorted(self._pool.restarts.items()):
            restarts.add_metric([function, reason], count)
        yield restarts

        memory = GaugeMetricFamily("sfsupervisor_instance_memory_bytes",
                                   "Current memory of each live instance (its whole tree).",
                                   labels=["function", "instance"])
        for instance in instances:
            if instance.state in (State.STARTING, State.IDLE, State.BUSY):
                memory.add_metric([function, str(instance.id)], instance.memory.current_bytes())
        yield memory

        dropped = CounterMetricFamily("sfsupervisor_log_dropped_lines",
                                      "Log lines lost: the log destination did not take them in "
                                      "time, or failed.", labels=["function"])
        dropped.add_metric([function], self._log.dropped_lines)
        yield dropped
