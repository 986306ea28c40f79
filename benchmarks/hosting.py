"""The hosting scenario: 20 functions on one server, Zipf-skewed calls, a budget of 8 instances.

`sfsupervisor --config`: 20 functions (`functions/hosted.py` under 20 names), each with
`min_instances = 0`, `max_instances = 4` and a short `idle_timeout`, on a server whose budget is
8 instances of 128 MB: instances come and go with the load, and a call for a function with none
idle waits for a cold start, for which another function's idle instance may be retired to make
room. Against it, the same functions as 20 fixed pools: `min_instances = max_instances = 1`,
always warm. 20 instances do not fit in a budget of 8, so that server's budget is raised to 20.

Both get the same load: CONNECTIONS keep-alive connections, closed loop, each call going to
function k with Zipf probability (s = 1.1) over the 20, for a fixed time after a warm-up under
the same load. Measured: calls and answers by status; instance starts per 1,000 calls, overall
and per function, from /metrics (instances ended, by reason, plus instances live, before and
after); the client's p50/p99 per function; and every SAMPLE_EVERY_S the instances counted
against the budget and the RSS of the supervisor's whole process tree.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import re
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

from benchmarks import client, probes, sandbox_tiers, soak
from benchmarks.servers import FUNCTIONS_DIR, Server, ServerFailed

ENTRY = "hosted.handler"
FUNCTIONS = 20
NAMES = tuple(f"f{rank:02d}" for rank in range(1, FUNCTIONS + 1))
ZIPF_S = 1.1
_WEIGHTS = [rank ** -ZIPF_S for rank in range(1, FUNCTIONS + 1)]
SHARES = tuple(weight / sum(_WEIGHTS) for weight in _WEIGHTS)
_CUMULATIVE = tuple(itertools.accumulate(SHARES))
CONNECTIONS = 16
MEMORY_MB = 128
# Short, so that instances of the rarely called functions retire between their calls.
IDLE_TIMEOUT_S = 2
SAMPLE_EVERY_S = 0.5
SEED = 1
OK = 200
MB = 1024 * 1024
# The instances of a function that count against the budget and may serve (not retiring).
LIVE_STATES = (b"starting", b"idle", b"busy")
INSTANCE_SAMPLE = re.compile(
    rb"^(sfsupervisor_instance_restarts_total|sfsupervisor_instances)\{([^}]*)\} (\S+)$",
    re.MULTILINE)
LABEL = re.compile(rb'(\w+)="([^"]*)"')
HOST_INSTANCES = re.compile(rb"^sfsupervisor_host_instances (\S+)$", re.MULTILINE)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Layout:
    """How the functions are hosted: the server's budget of instances (of MEMORY_MB each) and
    each function's range of instances."""

    key: str
    budget: int
    min_instances: int
    max_instances: int

    @property
    def label(self) -> str:
        """E.g. `elastic: 0-4 instances per function, budget 8`."""
        return (f"{self.key}: {self.min_instances}-{self.max_instances} instances per function, "
                f"budget {self.budget}")

    def config(self) -> str:
        """The text of its --config file."""
        server = (f"[server]\nmax_instances = {self.budget}\n"
                  f"max_memory_mb = {self.budget * MEMORY_MB}\n")
        return server + "".join(
            f'\n[functions.{name}]\ndir = "{FUNCTIONS_DIR}"\nentry = "{ENTRY}"\n'
            f"memory = {MEMORY_MB}\nmin_instances = {self.min_instances}\n"
            f"max_instances = {self.max_instances}\nidle_timeout = {IDLE_TIMEOUT_S}\n"
            for name in NAMES)


LAYOUTS = (
    Layout("elastic", budget=8, min_instances=0, max_instances=4),
    # Always warm, one instance each: 20 instances, which a budget of 8 cannot hold.
    Layout("fixed", budget=FUNCTIONS, min_instances=1, max_instances=1),
)


def write_config(layout: Layout, directory: Path) -> Path:
    """Write the layout's --config file into `directory`; its path."""
    path = directory / f"hosting-{layout.key}.toml"
    path.write_text(layout.config())
    return path


def command(config: Path, port: int) -> list[str]:
    """sfsupervisor serving `config` on `port` (the command line's port wins over the file's)."""
    return [sys.executable, "-m", "supervisor", "--config", str(config), "--port", str(port)]


def run(server: Server, layout: Layout, duration_s: float, warmup_s: float,
        progress: Progress) -> dict[str, Any]:
    """Check that every function answers, warm up, then measure `duration_s`."""
    server.wait_ready("/readyz")  # fixed: every function's instance is ready
    sandbox = probes.wait_for(server, sandbox_tiers.IN_EFFECT, 1)[0].decode()
    _check(server.port)
    rng = random.Random(SEED)
    progress(f"hosting · {layout.key} · warming up for {warmup_s:g} s")
    asyncio.run(_drive(server.port, warmup_s, rng))
    progress(f"hosting · {layout.key} · measuring for {duration_s:g} s")
    before = scrape(server.port)
    with Sampler(server) as sampled:
        tally = asyncio.run(_drive(server.port, duration_s, rng))
    after = scrape(server.port)
    server.check_alive()
    return {"layout": layout.key, "label": layout.label, "budget": layout.budget,
            "min_instances": layout.min_instances, "max_instances": layout.max_instances,
            "idle_timeout_s": IDLE_TIMEOUT_S, "memory_mb": MEMORY_MB, "sandbox": sandbox,
            "functions": FUNCTIONS, "zipf_s": ZIPF_S, "connections": CONNECTIONS,
            "duration_s": duration_s, "warmup_s": warmup_s,
            **_figures(tally, before, after), **sampled.figures()}


def _check(port: int) -> None:
    """One call to each function: it must answer 200 with its own name."""
    for name in NAMES:
        answer = client.fetch(port, f"/{name}")
        if answer.status != OK or answer.body != name.encode():
            raise ServerFailed(f"/{name} answered {answer.status} {answer.error} "
                               f"{answer.body[:200]!r}")


# -- the load --------------------------------------------------------------------------------


@dataclass
class Tally:
    """Per function: answers by status, the latency of the 200s, and 200s from another one."""

    statuses: list[Counter[int]] = field(default_factory=lambda: [Counter() for _ in NAMES])
    latency_ms: list[list[float]] = field(default_factory=lambda: [[] for _ in NAMES])
    wrong: int = 0
    elapsed_s: float = 0.0

    def add(self, index: int, answer: client.Answer) -> None:
        """Count the answer of a call to function NAMES[index]."""
        self.statuses[index][answer.status] += 1
        if answer.status == OK:
            self.latency_ms[index].append(answer.elapsed_s * 1000)
            self.wrong += answer.body != NAMES[index].encode()


async def _drive(port: int, duration_s: float, rng: random.Random) -> Tally:
    """CONNECTIONS callers, each calling again as soon as it is answered, until the time is
    up; each call goes to a function drawn by its Zipf share."""
    tally = Tally()
    started = time.perf_counter()
    deadline = started + duration_s

    async def keep_calling() -> None:
        connection = soak.Connection(port)
        try:
            while time.perf_counter() < deadline:
                index = rng.choices(range(FUNCTIONS), cum_weights=_CUMULATIVE)[0]
                tally.add(index, await connection.call(f"/{NAMES[index]}"))
        finally:
            connection.close()

    await asyncio.gather(*(keep_calling() for _ in range(CONNECTIONS)))
    tally.elapsed_s = time.perf_counter() - started
    return tally


class Sampler:
    """The instances counted against the budget (from /metrics) and the RSS of the server's
    process tree, every SAMPLE_EVERY_S while in use: in a thread of its own, so that reading
    /proc does not hold up the callers' event loop."""

    def __init__(self, server: Server) -> None:
        self._server = server
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._keep_sampling, daemon=True)
        self.instances: list[float] = []
        self.rss_mb: list[float] = []

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._stopped.set()
        self._thread.join()

    def figures(self) -> dict[str, Any]:
        """Mean and max of each series."""
        return {"instances": _mean_max(self.instances), "tree_rss_mb": _mean_max(self.rss_mb),
                "samples": len(self.rss_mb), "sample_every_s": SAMPLE_EVERY_S}

    def _keep_sampling(self) -> None:
        while True:
            answer = client.fetch(self._server.port, "/metrics")
            if found := HOST_INSTANCES.search(answer.body):
                self.instances.append(float(found.group(1)))
            self.rss_mb.append(_tree_rss_mb(self._server))
            if self._stopped.wait(SAMPLE_EVERY_S):
                return


def _tree_rss_mb(server: Server) -> float:
    """The RSS of the server and all its descendants, summed (shared pages once per process)."""
    total = 0
    for process in server.processes():
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / MB


def _mean_max(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "max": None}
    return {"mean": round(statistics.fmean(values), 1), "max": round(max(values), 1)}


# -- instance starts, from /metrics ----------------------------------------------------------


def scrape(port: int) -> dict[str, Counter[str]]:
    """Per function: its instances ended so far, by reason, and `live`: those that may serve.

    Every instance started is either live or ended, so between two scrapes the instances
    started are the growth of the sum.
    """
    answer = client.fetch(port, "/metrics")
    if answer.status != OK:
        raise ServerFailed(f"/metrics answered {answer.status} {answer.error}")
    counts: dict[str, Counter[str]] = {name: Counter() for name in NAMES}
    for family, labels, value in INSTANCE_SAMPLE.findall(answer.body):
        found = dict(LABEL.findall(labels))
        function = counts[found[b"function"].decode()]
        if family == b"sfsupervisor_instance_restarts_total":
            function[found[b"reason"].decode()] += round(float(value))
        elif found[b"state"] in LIVE_STATES:
            function["live"] += round(float(value))
    return counts


def _figures(tally: Tally, before: dict[str, Counter[str]],
             after: dict[str, Counter[str]]) -> dict[str, Any]:
    rows = [_function_row(index, tally, before[name], after[name])
            for index, name in enumerate(NAMES)]
    calls = sum(row["calls"] for row in rows)
    starts = sum(row["starts"] for row in rows)
    statuses = sum(tally.statuses, Counter())
    ended: Counter[str] = Counter()
    for name in NAMES:
        ended.update({reason: after[name][reason] - before[name][reason]
                      for reason in after[name] if reason != "live"})
    return {
        "elapsed_s": round(tally.elapsed_s, 2), "calls": calls,
        "calls_per_s": round(calls / tally.elapsed_s, 1),
        "statuses": {str(status): count for status, count in sorted(statuses.items())},
        "errors": calls - statuses[OK], "wrong_answers": tally.wrong,
        "instance_starts": starts, "starts_per_1000": per_1000(starts, calls),
        "instances_ended": {reason: count for reason, count in sorted(ended.items()) if count},
        "latency_ms": soak.latency([time_ms for times in tally.latency_ms for time_ms in times]),
        "per_function": rows,
    }


def _function_row(index: int, tally: Tally, before: Counter[str],
                  after: Counter[str]) -> dict[str, Any]:
    calls = sum(tally.statuses[index].values())
    starts = sum(after.values()) - sum(before.values())
    return {"name": NAMES[index], "share_pct": round(SHARES[index] * 100, 2), "calls": calls,
            "errors": calls - tally.statuses[index][OK], "starts": starts,
            "starts_per_1000": per_1000(starts, calls), **soak.latency(tally.latency_ms[index])}


def per_1000(count: int, calls: int) -> float | None:
    """`count` per 1,000 calls (None without calls)."""
    return round(count / calls * 1000, 1) if calls else None
