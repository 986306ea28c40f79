"""Measurements wrk cannot make: cold start, the first call after a crash, idle memory."""

from __future__ import annotations

import asyncio
import re
import statistics
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks import client
from benchmarks.servers import Server, ServerFailed

MB = 1024 * 1024
IMPORT_MARK = re.compile(rb"slow_import ready (\d+\.\d+)")
ALL_READY = re.compile(rb"all \d+ instances ready in (\d+) ms")
MARK_DEADLINE_S = 30.0
# After a crash: how long the pool gets to replace the instance (and re-warm a spare).
SETTLE_S = 0.3
WARM_CALLS = 64
WARM_CONCURRENCY = 16
IDLE_SETTLE_S = 0.5


def coldstart(server: Server, importers: int, says_ready: bool) -> dict[str, Any]:
    """Start to first 200, and to the moment the `importers`-th process finished importing.

    `says_ready`: the server logs `all N instances ready in X ms` (sfsupervisor), read too.
    """
    first_s = server.wait_ready()
    stamps = sorted(float(m) for m in wait_for(server, IMPORT_MARK, importers))
    own = wait_for(server, ALL_READY, 1) if says_ready else []
    return {
        "first_response_ms": first_s * 1000,
        "all_imported_ms": (stamps[importers - 1] - server.started_at) * 1000,
        "importers": importers,
        "own_all_ready_ms": float(own[0]) if own else None,
    }


def wait_for(server: Server, pattern: re.Pattern[bytes], count: int) -> list[bytes]:
    """The first group of each match of `pattern` in the server's log, once there are `count`
    (polled until MARK_DEADLINE_S)."""
    give_up = time.monotonic() + MARK_DEADLINE_S
    while time.monotonic() < give_up:
        found = pattern.findall(server.log_path.read_bytes())
        if len(found) >= count:
            return found
        server.check_alive()
        time.sleep(0.01)
    raise ServerFailed(f"fewer than {count} log lines like {pattern.pattern!r} "
                       f"within {MARK_DEADLINE_S:g} s", server.log_tail())


def recovery(server: Server, cycles: int, says_ready: bool) -> dict[str, Any]:
    """Crash the instance, then time the next call (fresh connection each), `cycles` times.

    `says_ready`: the server logs `all N instances ready` (sfsupervisor), awaited first: its
    spare starts importing only after the first 200, and the first crash must find it warm.
    """
    server.wait_ready()
    if says_ready:
        wait_for(server, ALL_READY, 1)
    baseline = [_timed_ok(server.port) for _ in range(cycles)]
    after, crash_statuses, failed = [], [], 0
    for _ in range(cycles):
        crash_statuses.append(client.fetch(server.port, "/?crash=1").status)
        answer = client.fetch(server.port, "/")
        if answer.status == 200:
            after.append(answer.elapsed_s * 1000)
        else:
            failed += 1
        time.sleep(SETTLE_S)
    server.check_alive()
    return {
        "cycles": cycles,
        "baseline_p50_ms": statistics.median(baseline),
        "after_crash_p50_ms": statistics.median(after) if after else None,
        "after_crash_max_ms": max(after) if after else None,
        "after_crash_ms": after,
        "after_crash_failed": failed,
        "crash_statuses": sorted(set(crash_statuses)),
    }


def _timed_ok(port: int) -> float:
    answer = client.fetch(port, "/")
    if answer.status != 200:
        raise ServerFailed(f"baseline call answered {answer.status} {answer.error}")
    return answer.elapsed_s * 1000


def idle_memory(server: Server) -> dict[str, Any]:
    """RSS and USS of the server's processes once warm and idle (main process and workers)."""
    server.wait_ready()
    warm(server.port)
    time.sleep(IDLE_SETTLE_S)
    main, *workers = server.processes()
    serving = workers or [main]
    figures = [_memory(process) for process in serving]
    return {
        "main": _memory(main),
        "workers": len(workers),
        "worker_rss_mb": statistics.mean(f["rss_mb"] for f in figures),
        "worker_uss_mb": statistics.mean(f["uss_mb"] for f in figures),
        "total_rss_mb": sum(_memory(p)["rss_mb"] for p in [main, *workers]),
        "total_uss_mb": sum(_memory(p)["uss_mb"] for p in [main, *workers]),
    }


def bare_interpreter(server: Server) -> dict[str, float]:
    """RSS and USS of `python -c 'import time; time.sleep(...)'` once it is asleep."""
    time.sleep(IDLE_SETTLE_S)
    server.check_alive()
    return _memory(psutil.Process(server.pid))


def warm(port: int) -> None:
    """A burst of calls from several connections at once, so every worker has served some."""
    asyncio.run(_warm(port))


async def _warm(port: int) -> None:
    gate = asyncio.Semaphore(WARM_CONCURRENCY)

    async def one() -> None:
        async with gate:
            await client.request(port)

    await asyncio.gather(*(one() for _ in range(WARM_CALLS)))


def _memory(process: psutil.Process) -> dict[str, float]:
    info = process.memory_full_info()
    return {"rss_mb": info.rss / MB, "uss_mb": info.uss / MB}


# sfsupervisor's text log: "2026-12-07T13:13:29.242Z INFO    [...] message".
_OUR_LEVEL = re.compile(rb"\d{4}-\d\d-\d\dT[\d:.]+Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")
_KIND_OF_LEVEL = {b"WARNING": "warning", b"ERROR": "error", b"CRITICAL": "error"}


def scan_log(path: Path, limit: int = 5) -> dict[str, Any]:
    """Count the log's warning, error and traceback lines; keep the first few of them."""
    counts = {"warning": 0, "error": 0, "traceback": 0}
    samples: list[str] = []
    with open(path, "rb") as log:
        for line in log:
            kind = _line_kind(line)
            if kind is None:
                continue
            counts[kind] += 1
            if len(samples) < limit:
                samples.append(line.decode("utf-8", "replace").rstrip()[:300])
    return {"counts": counts, "samples": samples}


def _line_kind(line: bytes) -> str | None:
    if b"Traceback" in line:
        return "traceback"
    ours = _OUR_LEVEL.match(line)
    if ours is not None:  # by its level: an INFO line may quote an ERROR line (a 499's)
        return _KIND_OF_LEVEL.get(ours[1])
    if b"ERROR" in line or b"CRITICAL" in line:
        return "error"
    if b"WARNING" in line:
        return "warning"
    return None
