"""The soak: minutes of mixed good and hostile calls at twice what the pool can serve.

sfsupervisor only, `--instances N --timeout 1 --memory 64`, its other options at their defaults
(info logging to a file, one warm spare). A short closed-loop warm-up of good calls measures the
pool's capacity; then calls are launched open loop at twice that for the whole run, mostly good
(`ok`, `sleep`), a few percent hostile (raise, crash, timeout, memory, fork, big output, big body,
a detached grandchild, an exception that cannot be printed: `functions/soak.py`). They go out on
a fixed set of keep-alive connections, more than the supervisor will hold (running + queued), so
that the excess is turned away by the supervisor with 429 rather than held back by the client;
each call has its own generous deadline.

Every sample period the supervisor's RSS, open fds, threads and descendants are recorded, with
the answers of that window by status. What a long run can show and a short one cannot: RSS or
fds creeping up, calls left without an answer, processes piling up. Judged: RSS and fds within
5 % of the first sample after the warm-up window, no call unanswered, the process tree bounded,
and every call answered as its behaviour should be (or 429).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import re
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil

from benchmarks import client
from benchmarks.overload import calls_by_outcome
from benchmarks.servers import Server
from supervisor.http import REFUSED_HOLD_S

ENTRY = "soak.handler"
OPTIONS = ("--timeout", "1", "--memory", "64")
SPARES = 1  # sfsupervisor's default --spares
MAX_QUEUE = 256  # sfsupervisor's default --max-queue
# Calls launched per 1000, by `?do=` behaviour: 96.5 % good, 3.5 % hostile.
MIX = {"ok": 715, "sleep": 250, "raise": 10, "big_body": 5, "bad_str": 5, "crash": 5,
       "memory": 3, "fork_return": 3, "big_stdout": 2, "timeout": 1, "detach": 1}
BEHAVIOURS = tuple(MIX)
GOOD = ("ok", "sleep")
SLEEP_MEAN_S = 0.035  # functions/soak.py sleeps 20-50 ms
REJECTED = 429
LOST = 0  # client.Answer's status for "no HTTP answer"
EXPECTED = {"ok": 200, "sleep": 200, "raise": 502, "big_body": 502, "bad_str": 502,
            "crash": 502, "memory": 502, "fork_return": 200, "big_stdout": 200, "timeout": 504,
            "detach": 200}
OVERLOAD_FACTOR = 2.0
CAPACITY_CONNECTIONS_PER_INSTANCE = 2  # closed loop: every instance always has a call waiting
# Beyond MAX_QUEUE calls running or waiting: connections between a call and the next.
SPARE_CONNECTIONS = 64
CALL_TIMEOUT_S = 30.0
IDLE_RECONNECT_S = 2.0  # well inside uvicorn's 5 s keep-alive timeout
SAMPLE_EVERY_S = 30.0
MIN_WINDOWS = 10  # a shortened run samples more often
TREE_POLL_S = 1.0
FLAT_LIMIT_PCT = 5.0
# The tree may hold twice what it holds at rest (every instance's replacement booting while the
# instance itself is being killed and reaped) and this many more: fork_return children on their
# way out, detach grandchildren asleep, zombies waiting for the reaper's sweep. At rest it holds
# the pool, its spare and the cgroup guard, and per instance as many processes as its sandbox
# tier runs (two more in the ns tier).
DESCENDANT_SLACK = 8
KEEP_SAMPLES = 5
SEED = 1
MB = 1024 * 1024
RESTARTS_TOTAL = re.compile(
    rb'^sfsupervisor_instance_restarts_total\{[^}]*reason="(\w+)"[^}]*\} (\S+)$', re.MULTILINE)

Progress = Callable[[str], None]


def sample_every(duration_s: float) -> float:
    """SAMPLE_EVERY_S, or shorter so that a shortened run still has MIN_WINDOWS windows."""
    return min(SAMPLE_EVERY_S, duration_s / MIN_WINDOWS)


def connection_count(rate: float) -> int:
    """Enough keep-alive connections to launch every call on time at `rate` per second.

    The supervisor holds MAX_QUEUE calls running or waiting, and a client it refused waits
    REFUSED_HOLD_S before its next request is read: at this rate, half the calls refused keep
    rate / 2 x REFUSED_HOLD_S connections waiting too (twice that, for bursts). With fewer, calls
    wait in the client for a connection: the offered load falls behind and the run's end drains a
    backlog for minutes.
    """
    return MAX_QUEUE + SPARE_CONNECTIONS + math.ceil(rate * REFUSED_HOLD_S)


def run(server: Server, instances: int, duration_s: float, warmup_s: float,
        record: dict[str, Any], progress: Progress) -> None:
    """Soak the server; `record` is filled as the run goes, so an interrupted run keeps its part."""
    server.wait_ready()
    interval = sample_every(duration_s)
    record.update({
        "instances": instances, "spares": SPARES, "options": list(OPTIONS),
        "duration_s": duration_s, "sample_every_s": interval,
        "call_timeout_s": CALL_TIMEOUT_S, "mix_per_1000": MIX, "expected": EXPECTED,
        "samples": [],
        "complete": False,
    })
    rng = random.Random(SEED)
    progress(f"soak · measuring capacity ({warmup_s:g} s of good calls, closed loop)")
    measured = asyncio.run(_capacity(server.port, instances, warmup_s, rng))
    rate = OVERLOAD_FACTOR * measured
    record["capacity"] = {"measured_per_s": round(measured, 1), "warmup_s": warmup_s,
                          "ideal_per_s": round(_ideal_capacity(instances), 1)}
    record["rate_per_s"] = round(rate, 1)
    record["connections"] = connection_count(rate)
    before = _scrape(server.port)
    tally = asyncio.run(_soak(server, rate, duration_s, interval, rng, record, progress))
    server.check_alive()
    record.update(tally.figures())
    record.update(_metrics_delta(before, _scrape(server.port)))
    record["verdicts"] = verdicts(record)
    record["complete"] = True


def _ideal_capacity(instances: int) -> float:
    """Instances over the good mix's mean handler time (ok taken as free): an upper bound."""
    good = sum(MIX[name] for name in GOOD)
    return instances / (MIX["sleep"] / good * SLEEP_MEAN_S)


def _pick(rng: random.Random, names: tuple[str, ...] = BEHAVIOURS) -> str:
    return rng.choices(names, weights=[MIX[name] for name in names])[0]


# -- a keep-alive HTTP/1.1 client ------------------------------------------------------------


class Connection:
    """One keep-alive connection, (re)opened when needed; `call` never raises."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._last_used = 0.0
        self.opened = 0

    async def call(self, path: str) -> client.Answer:
        """GET `path`; status 0 (LOST) with `error` set when no whole answer came in time."""
        started = time.perf_counter()
        try:
            status, body = await asyncio.wait_for(self._exchange(path), CALL_TIMEOUT_S)
        except (OSError, EOFError, ValueError, TimeoutError) as exc:
            self.close()
            return client.Answer(LOST, b"", time.perf_counter() - started,
                                 f"{type(exc).__name__}: {exc}")
        return client.Answer(status, body, time.perf_counter() - started)

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None

    async def _exchange(self, path: str) -> tuple[int, bytes]:
        reader, writer = await self._open()
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {client.HOST}:{self.port}\r\n\r\n".encode())
        await writer.drain()
        status, body, keep_alive = await _read_answer(reader)
        self._last_used = time.monotonic()
        if not keep_alive:
            self.close()
        return status, body

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        stale = time.monotonic() - self._last_used > IDLE_RECONNECT_S
        if self._streams is not None and (stale or self._streams[0].at_eof()):
            self.close()
        if self._streams is None:
            self._streams = await asyncio.open_connection(client.HOST, self.port)
            self.opened += 1
        return self._streams


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """Status, body, and whether the connection stays open (Content-Length bodies only)."""
    status_line = await reader.readline()
    if not status_line:
        raise EOFError("the connection closed without an answer")
    status = int(status_line.split()[1])
    length, keep_alive = None, True
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "connection" and value.strip().lower() == "close":
            keep_alive = False
    if length is None:
        return status, await reader.read(), False
    return status, await reader.readexactly(length), keep_alive


# -- capacity --------------------------------------------------------------------------------


async def _capacity(port: int, instances: int, seconds: float, rng: random.Random) -> float:
    """Good calls answered 200 per second, closed loop, every instance always kept busy."""
    started = time.perf_counter()
    deadline = started + seconds
    answered = 0

    async def keep_calling() -> None:
        nonlocal answered
        connection = Connection(port)
        try:
            while time.perf_counter() < deadline:
                answer = await connection.call(f"/?do={_pick(rng, GOOD)}")
                answered += answer.status == 200
        finally:
            connection.close()

    await asyncio.gather(*(keep_calling()
                           for _ in range(CAPACITY_CONNECTIONS_PER_INSTANCE * instances)))
    return answered / (time.perf_counter() - started)


# -- the soak --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """A call to make: its behaviour and when it was due to be launched."""

    behaviour: str
    due: float


@dataclass
class Tally:
    """What came back: per window, per behaviour, per status."""

    window: Counter[int] = field(default_factory=Counter)
    by_behaviour: dict[str, Counter[int]] = field(default_factory=dict)
    error_types: dict[str, Counter[str]] = field(default_factory=dict)
    latency_ms: dict[int, list[float]] = field(default_factory=dict)
    launch_lag_ms: list[float] = field(default_factory=list)
    lost: list[dict[str, Any]] = field(default_factory=list)
    unexpected: list[dict[str, Any]] = field(default_factory=list)
    lost_count: int = 0
    unexpected_count: int = 0

    def add(self, call: Call, answer: client.Answer) -> None:
        status = answer.status
        self.window[status] += 1
        self.by_behaviour.setdefault(call.behaviour, Counter())[status] += 1
        self.latency_ms.setdefault(status, []).append(answer.elapsed_s * 1000)
        if status not in (200, LOST):
            kinds = self.error_types.setdefault(call.behaviour, Counter())
            kinds[_error_type(answer.body)] += 1
        if status == LOST:
            self.lost_count += 1
            _keep(self.lost, {"do": call.behaviour, "error": answer.error,
                              "elapsed_s": round(answer.elapsed_s, 3)})
        elif status not in (EXPECTED[call.behaviour], REJECTED):
            self.unexpected_count += 1
            _keep(self.unexpected, {"do": call.behaviour, "status": status,
                                    "body": answer.body[:300].decode("utf-8", "replace")})

    def take_window(self) -> dict[str, int]:
        window, self.window = self.window, Counter()
        return {str(status): count for status, count in sorted(window.items())}

    def figures(self) -> dict[str, Any]:
        calls = sum(sum(counts.values()) for counts in self.by_behaviour.values())
        return {
            "calls": calls,
            "by_behaviour": {name: {"calls": sum(counts.values()),
                                    "statuses": {str(s): n for s, n in sorted(counts.items())},
                                    "error_types": dict(self.error_types.get(name, {}))}
                             for name, counts in sorted(self.by_behaviour.items())},
            "latency_ms": {str(status): latency(times)
                           for status, times in sorted(self.latency_ms.items())},
            "launch_lag_ms": latency(self.launch_lag_ms),
            "lost": {"count": self.lost_count, "samples": self.lost},
            "unexpected": {"count": self.unexpected_count, "samples": self.unexpected},
        }


def _keep(samples: list[dict[str, Any]], sample: dict[str, Any]) -> None:
    if len(samples) < KEEP_SAMPLES:
        samples.append(sample)


def _error_type(body: bytes) -> str:
    try:
        return str(json.loads(body).get("errorType"))
    except (ValueError, AttributeError):
        return "not JSON"


def latency(times_ms: list[float]) -> dict[str, float]:
    """p50, p99 and max of `times_ms` (empty when there are none)."""
    if not times_ms:
        return {}
    p99 = (statistics.quantiles(times_ms, n=100, method="inclusive")[98]
           if len(times_ms) > 1 else times_ms[0])
    return {"p50": round(statistics.median(times_ms), 2), "p99": round(p99, 2),
            "max": round(max(times_ms), 2)}


async def _soak(server: Server, rate: float, duration_s: float, interval: float,
                rng: random.Random, record: dict[str, Any], progress: Progress) -> Tally:
    """Launch on schedule, answer on record["connections"] keep-alive connections, sample as it
    goes."""
    tally = Tally()
    calls: asyncio.Queue[Call | None] = asyncio.Queue()
    callers = [asyncio.create_task(_keep_answering(server.port, calls, tally))
               for _ in range(record["connections"])]
    started = time.perf_counter()
    monitor = Monitor(psutil.Process(server.pid), tally, record["samples"], started, interval)
    watching = asyncio.create_task(monitor.watch(duration_s, progress))
    launched = await _launch(calls, rate, duration_s, rng, started, monitor.gone)
    await watching  # the last sample under load, before the connections start closing
    for _ in callers:
        calls.put_nowait(None)
    opened = await asyncio.gather(*callers)
    if monitor.alive():
        monitor.sample(phase="drained")
    record["connections_opened"] = sum(opened)
    record["requests"] = launched
    record["offered_per_s"] = round(launched / duration_s, 1)
    return tally


async def _launch(calls: asyncio.Queue[Call | None], rate: float, duration_s: float,
                  rng: random.Random, started: float, gone: asyncio.Event) -> int:
    """Queue each call at its due time, whatever became of the earlier ones (open loop).

    Stops early when the supervisor is gone. Returns how many calls were queued.
    """
    total = round(rate * duration_s)
    for index in range(total):
        due = started + index / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        if gone.is_set():
            return index
        calls.put_nowait(Call(_pick(rng), due))
    return total


async def _keep_answering(port: int, calls: asyncio.Queue[Call | None], tally: Tally) -> int:
    """Make calls on one connection until told to stop; returns how often it was (re)opened."""
    connection = Connection(port)
    try:
        while (call := await calls.get()) is not None:
            tally.launch_lag_ms.append((time.perf_counter() - call.due) * 1000)
            tally.add(call, await connection.call(f"/?do={call.behaviour}"))
    finally:
        connection.close()
    return connection.opened


class Monitor:
    """The supervisor's RSS, fds, threads and descendants, sampled every `interval` seconds.

    Descendants are also counted every TREE_POLL_S in between: a sample gives the most seen
    in its window, and what they were (see `census`). psutil reads /proc on the event loop: a
    few ms per poll.
    """

    def __init__(self, process: psutil.Process, tally: Tally, samples: list[dict[str, Any]],
                 started: float, interval: float) -> None:
        self.process = process
        self.tally = tally
        self.samples = samples
        self.started = started
        self.interval = interval
        self._most: dict[str, int] = {}
        self.gone = asyncio.Event()  # the supervisor exited: stop launching

    async def watch(self, duration_s: float, progress: Progress) -> None:
        """Sample at 0, interval, 2 x interval, ... up to duration_s; poll the tree between."""
        windows = round(duration_s / self.interval)
        while len(self.samples) <= windows:
            due = self.started + len(self.samples) * self.interval
            wake = min(due, time.perf_counter() + TREE_POLL_S)
            await asyncio.sleep(max(0.0, wake - time.perf_counter()))
            if not self.alive():
                self.gone.set()
                return
            if time.perf_counter() >= due:
                progress(_progress_line(self.sample(phase="load"), duration_s))
            else:
                self._count_descendants()

    def alive(self) -> bool:
        """The supervisor still runs (exited, it stays a zombie until the harness reaps it)."""
        try:
            return self.process.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def sample(self, phase: str) -> dict[str, Any]:
        """Record one sample; the answers are those since the previous one."""
        now = self._count_descendants()
        with self.process.oneshot():
            sample = {
                "t_s": round(time.perf_counter() - self.started, 1), "phase": phase,
                "rss_mb": round(self.process.memory_info().rss / MB, 2),
                "fds": self.process.num_fds(), "threads": self.process.num_threads(),
                "descendants": sum(now.values()), "descendants_now": now,
                "descendants_max": sum(self._most.values()), "descendants_most": self._most,
                "answers": self.tally.take_window(),
            }
        self._most = now
        self.samples.append(sample)
        return sample

    def _count_descendants(self) -> dict[str, int]:
        now = census(self.process)
        if sum(now.values()) > sum(self._most.values()):
            self._most = now
        return now


def census(process: psutil.Process) -> dict[str, int]:
    """The process's descendants by kind.

    `leaders`: its children that lead a session of their own: instances (starting, serving or
    being killed) and the cgroup guard. `zombies`: exited, not yet reaped. `others`: the rest,
    such as a handler's forked children and detached grandchildren (re-parented to the
    supervisor, a subreaper).
    """
    kinds = {"leaders": 0, "zombies": 0, "others": 0}
    for child in process.children(recursive=True):
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                kinds["zombies"] += 1
            elif child.ppid() == process.pid and os.getsid(child.pid) == child.pid:
                kinds["leaders"] += 1
            else:
                kinds["others"] += 1
        except (psutil.NoSuchProcess, ProcessLookupError):
            continue
    return kinds


def _progress_line(sample: dict[str, Any], duration_s: float) -> str:
    answers = sum(sample["answers"].values())
    return (f"soak · {clock(sample['t_s'])} of {clock(duration_s)} · RSS {sample['rss_mb']:.1f} MB"
            f" · {sample['fds']} fds · {sample['descendants']} descendants · {answers:,} answers"
            f" ({sample['answers'].get(str(LOST), 0)} lost)")


def clock(seconds: float) -> str:
    """`m:ss`."""
    whole = round(seconds)
    return f"{whole // 60}:{whole % 60:02d}"


# -- what /metrics says, and the verdicts ----------------------------------------------------


def _scrape(port: int) -> dict[str, dict[str, float]]:
    answer = client.fetch(port, "/metrics")
    restarts = RESTARTS_TOTAL.findall(answer.body) if answer.status == 200 else []
    return {"calls": calls_by_outcome(port),
            "restarts": {reason.decode(): float(value) for reason, value in restarts}}


def _metrics_delta(before: dict[str, dict[str, float]],
                   after: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """sfsupervisor_calls_total by outcome and restarts by reason, over the soak."""
    def delta(key: str) -> dict[str, float]:
        return {name: value - before[key].get(name, 0) for name, value in after[key].items()}
    return {"metrics_calls": delta("calls"), "metrics_restarts": delta("restarts")}


def verdicts(record: dict[str, Any]) -> dict[str, Any]:
    """RSS and fds flat after the first window, nothing lost, tree bounded, answers as expected."""
    steady = [sample for sample in record["samples"] if sample["phase"] == "load"][1:]
    most = max(sample["descendants_max"] for sample in record["samples"])
    at_rest = record["samples"][0]["descendants"]  # after the warm-up, before the first call
    bound = 2 * at_rest + DESCENDANT_SLACK
    found = {
        "rss": _flatness([sample["rss_mb"] for sample in steady], steady),
        "fds": _flatness([sample["fds"] for sample in steady], steady),
        "lost": record["lost"]["count"],
        "unexpected": record["unexpected"]["count"],
        "descendants": {"at_rest": at_rest, "bound": bound, "max": most,
                        "bounded": most <= bound},
    }
    found["passed"] = not problems(found)
    return found


def _flatness(values: list[float], steady: list[dict[str, Any]]) -> dict[str, Any]:
    """The largest deviation from the first steady sample, signed, in percent of it."""
    base = values[0]
    furthest = max(range(len(values)), key=lambda index: abs(values[index] - base))
    deviation = (values[furthest] - base) / base * 100 if base else 0.0
    return {"baseline": base, "baseline_t_s": steady[0]["t_s"], "min": min(values),
            "max": max(values), "max_deviation_pct": round(deviation, 2),
            "at_t_s": steady[furthest]["t_s"], "flat": abs(deviation) <= FLAT_LIMIT_PCT}


def problems(found: dict[str, Any]) -> list[str]:
    """The verdicts that failed, in words (empty when the soak passed)."""
    failed = []
    for key, what in (("rss", "supervisor RSS"), ("fds", "supervisor open fds")):
        if not found[key]["flat"]:
            failed.append(f"{what} moved {found[key]['max_deviation_pct']:+.1f} % "
                          f"(limit ±{FLAT_LIMIT_PCT:g} %)")
    if found["lost"]:
        failed.append(f"{found['lost']} call(s) got no HTTP answer")
    if found["unexpected"]:
        failed.append(f"{found['unexpected']} call(s) got an answer other than their "
                      "behaviour's or 429")
    if not found["descendants"]["bounded"]:
        failed.append(f"{found['descendants']['max']} descendants "
                      f"(bound {found['descendants']['bound']})")
    return failed
