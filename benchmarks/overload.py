"""The overload probe: calls launched at a fixed rate, ten times what the pool can serve.

Open loop: a call is launched on schedule whatever became of the earlier ones, each on its own
connection with a deadline, so a server that stalls shows up as calls with no answer rather
than as a load generator that slows down with it.

The supervisor's own paths (/healthz, /readyz, /metrics) are probed in turn all along, and then
again while wrk hammers the function with 1,024 keep-alive connections whose every refused
client retries at once: an orchestrator's probe must be answered within 100 ms under any load.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks import client, loadgen
from benchmarks.servers import Server

ENTRY = "sleep.handler"
INSTANCES = 2
MAX_QUEUE = 8
CALL_S = 0.05  # functions/sleep.py
CAPACITY_PER_S = INSTANCES / CALL_S
RATE_PER_S = 10 * CAPACITY_PER_S
# No warm spare (it adds no concurrency) and no per-call log lines (the log would be the limit).
OPTIONS = ("--spares", "0", "--max-queue", str(MAX_QUEUE), "--log-level", "warning")
CALL_TIMEOUT_S = 5.0
RSS_EVERY_S = 0.5
RESERVED_PATHS = ("/healthz", "/readyz", "/metrics")
PROBE_EVERY_S = 0.1
HAMMER_CONNECTIONS = 1024
HAMMER_RAMP_UP_S = 1.0  # probes taken while wrk opens its connections would measure less
HAMMER_MARGIN_S = 1.0  # probing stops this long before wrk does: every probe meets the load
MB = 1024 * 1024
CALLS_TOTAL = re.compile(rb'^sfsupervisor_calls_total\{[^}]*outcome="(\w+)"[^}]*\} (\S+)$',
                         re.MULTILINE)


def run(server: Server, duration_s: float) -> dict[str, Any]:
    """Drive the server at RATE_PER_S for `duration_s`; statuses, latencies, RSS, metrics."""
    server.wait_ready()
    before = calls_by_outcome(server.port)
    launched, answers, rss, reserved = asyncio.run(_drive(server.port, server.pid, duration_s))
    server.check_alive()
    after = calls_by_outcome(server.port)
    hammered = _probe_while_hammered(server.port, duration_s) if loadgen.available() else None
    server.check_alive()
    return {
        "rate_per_s": RATE_PER_S, "capacity_per_s": CAPACITY_PER_S, "instances": INSTANCES,
        "max_queue": MAX_QUEUE, "call_timeout_s": CALL_TIMEOUT_S, "options": list(OPTIONS),
        "duration_s": duration_s, **_statuses(launched, answers),
        "rss_mb": {"start": rss[0], "max": max(rss), "end": rss[-1], "samples": rss},
        "metrics_calls": {outcome: after.get(outcome, 0) - before.get(outcome, 0)
                          for outcome in ("ok", "rejected")},
        "reserved_ms": {"during_load": reserved, "hammered": hammered,
                        "hammer_connections": HAMMER_CONNECTIONS},
    }


async def _drive(port: int, pid: int, duration_s: float
                 ) -> tuple[list[float], list[client.Answer], list[float], dict[str, Any]]:
    """Launch the calls on schedule while sampling the supervisor's RSS and probing its own
    paths; wait for every answer."""
    process = psutil.Process(pid)
    rss = [_rss_mb(process)]
    sampler = asyncio.create_task(_sample(process, rss))
    probes: list[client.Answer] = []
    prober = asyncio.create_task(_probe_reserved(port, probes))
    started = time.perf_counter()
    launched, calls = [], []
    for index in range(round(RATE_PER_S * duration_s)):
        await asyncio.sleep(max(0.0, started + index / RATE_PER_S - time.perf_counter()))
        launched.append(time.perf_counter() - started)
        calls.append(asyncio.create_task(client.request(port, timeout_s=CALL_TIMEOUT_S)))
    prober.cancel()
    answers = await asyncio.gather(*calls)
    sampler.cancel()
    rss.append(_rss_mb(process))
    return launched, answers, rss, _probe_figures(probes)


async def _probe_reserved(port: int, probes: list[client.Answer]) -> None:
    """GET the reserved paths in turn, one a PROBE_EVERY_S, each on a new connection."""
    for path in itertools.cycle(RESERVED_PATHS):
        probes.append(await client.request(port, path, timeout_s=CALL_TIMEOUT_S))
        await asyncio.sleep(PROBE_EVERY_S)


def _probe_while_hammered(port: int, duration_s: float) -> dict[str, Any]:
    """Probe the reserved paths while wrk keeps HAMMER_CONNECTIONS busy on the function."""
    with tempfile.TemporaryDirectory(prefix="sfs-hammer-") as work:
        hammer = threading.Thread(target=loadgen.run, args=(
            port, loadgen.Load(), HAMMER_CONNECTIONS, duration_s, Path(work)))
        hammer.start()
        try:
            probes: list[client.Answer] = []
            asyncio.run(_probe_for(port, probes, HAMMER_RAMP_UP_S,
                                   duration_s - HAMMER_MARGIN_S))
        finally:
            hammer.join()
    return _probe_figures(probes)


async def _probe_for(port: int, probes: list[client.Answer], after_s: float,
                     until_s: float) -> None:
    await asyncio.sleep(after_s)
    prober = asyncio.create_task(_probe_reserved(port, probes))
    await asyncio.sleep(until_s - after_s)
    prober.cancel()


def _probe_figures(probes: list[client.Answer]) -> dict[str, Any]:
    """Latency of the probes; those not answered 200 are counted apart (and timed anyway)."""
    times_ms = [probe.elapsed_s * 1000 for probe in probes]
    figures: dict[str, Any] = {"probes": len(probes),
                               "not_200": sum(probe.status != 200 for probe in probes)}
    if times_ms:
        figures.update(_latency(times_ms))
    return figures


async def _sample(process: psutil.Process, rss: list[float]) -> None:
    while True:
        await asyncio.sleep(RSS_EVERY_S)
        rss.append(_rss_mb(process))


def _rss_mb(process: psutil.Process) -> float:
    return round(process.memory_info().rss / MB, 1)


def _statuses(launched: list[float], answers: list[client.Answer]) -> dict[str, Any]:
    """Counts and latencies by status; the offered rate as launched; the 200s' rate.

    Status 0 means no answer within CALL_TIMEOUT_S (or a connection error). The 200s are
    counted over the span from the first launch to the last 200, when the pool was saturated.
    """
    ok_ends = [start + answer.elapsed_s for start, answer in zip(launched, answers, strict=True)
               if answer.status == 200]
    by_status: dict[int, list[float]] = {}
    for answer in answers:
        by_status.setdefault(answer.status, []).append(answer.elapsed_s * 1000)
    return {
        "requests": len(answers),
        "launch_span_s": round(launched[-1], 3),
        "offered_per_s": round(len(answers) / (launched[-1] + 1 / RATE_PER_S), 1),
        "ok_per_s": round(len(ok_ends) / max(ok_ends), 1) if ok_ends else 0.0,
        "counts": {str(status): len(times) for status, times in sorted(by_status.items())},
        "errors": sorted({answer.error for answer in answers if answer.error})[:5],
        "latency_ms": {str(status): _latency(times) for status, times in by_status.items()},
    }


def _latency(times_ms: list[float]) -> dict[str, float]:
    p99 = (statistics.quantiles(times_ms, n=100, method="inclusive")[98] if len(times_ms) > 1
           else times_ms[0])
    return {"p50": statistics.median(times_ms), "p99": p99, "max": max(times_ms)}


def calls_by_outcome(port: int) -> dict[str, float]:
    """sfsupervisor_calls_total by outcome, scraped from GET /metrics."""
    answer = client.fetch(port, "/metrics")
    if answer.status != 200:
        return {}
    return {outcome.decode(): float(value) for outcome, value in CALLS_TOTAL.findall(answer.body)}
