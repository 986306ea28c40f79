"""The run: every selected scenario against every server taking part, results into one dict."""

from __future__ import annotations

import contextlib
import functools
import itertools
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import client, cpu, hosting, loadgen, overload, probes, sandbox_tiers, soak
from benchmarks.progress import Progress
from benchmarks.scenarios import (
    COLDSTART_ENTRY,
    LOAD_SCENARIOS,
    MEMORY_ENTRY,
    RECOVERY_ENTRY,
    LoadScenario,
)
from benchmarks.servers import PEERS, Peer, Server, ServerFailed, free_port

RECOVERY_INSTANCES = 1
# sfsupervisor's recovery runs: (label suffix, extra options).
SPARE_VARIANTS = (("--spares 0", ("--spares", "0")), ("--spares 1", ("--spares", "1")))
RECOVERY_PEERS = ("gunicorn", "ff", "ff-asgi")
COLDSTART_PEERS = ("uvicorn", "gunicorn", "ff", "ff-asgi", "sfsupervisor")
MEMORY_PEERS = COLDSTART_PEERS
# The other servers have no admission control: under overload they queue without bound.
OVERLOAD_PEERS = ("sfsupervisor",)
SOAK_PEERS = OVERLOAD_PEERS
HOSTING_PEERS = OVERLOAD_PEERS  # many functions on one server: sfsupervisor's --config
TIER_PEER = "sfsupervisor"
SETTLE_PROBES = 3
SETTLE_TIMEOUT_S = 60.0
SETTLE_PAUSE_S = 0.05
_FAILURES = (ServerFailed, RuntimeError, OSError, subprocess.SubprocessError)
# A server stopped by our SIGTERM may exit 0 or re-raise the signal (uvicorn does).
CLEAN_EXITS = (0, -signal.SIGTERM, None)


@dataclass(frozen=True)
class Settings:
    """What to run and for how long."""

    scenarios: tuple[str, ...]
    servers: tuple[str, ...]
    instances: int
    duration_s: float
    rounds: int
    warmup_s: float
    coldstart_repeats: int
    recovery_cycles: int
    overload_s: float
    soak_s: float
    soak_warmup_s: float
    tier_repeats: int
    hosting_s: float
    hosting_warmup_s: float
    quick: bool


class Suite:
    """Runs the selected scenarios and collects runs, probes, failures and log findings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.results: dict[str, Any] = {
            "runs": [], "coldstart": [], "coldstart_tiers": [], "recovery": [], "memory": {},
            "overload": [], "soak": [], "hosting": [], "failures": [], "logs": [],
        }
        self._work = Path(tempfile.mkdtemp(prefix="sfs-bench-"))
        self._progress = Progress(self._count_steps())

    def run(self) -> dict[str, Any]:
        """Run everything selected; results accumulate in `self.results` as they come."""
        try:
            for name in self.settings.scenarios:
                if name in LOAD_SCENARIOS:
                    self._load_scenario(LOAD_SCENARIOS[name])
                else:
                    getattr(self, f"_{name}")()
        finally:
            self._progress.close()
            _remove_tree(self._work)
        return self.results

    # -- planning --------------------------------------------------------------------------

    def _servers_for(self, scenario: LoadScenario) -> list[Peer]:
        return [PEERS[key] for key in scenario.servers if key in self.settings.servers]

    def _connections(self, scenario: LoadScenario) -> tuple[int, ...]:
        return scenario.quick_connections if self.settings.quick else scenario.connections

    def _recovery_targets(self) -> list[tuple[Peer, str, tuple[str, ...]]]:
        targets = []
        if "sfsupervisor" in self.settings.servers:
            targets += [(PEERS["sfsupervisor"], suffix, extra) for suffix, extra in SPARE_VARIANTS]
        targets += [(PEERS[key], "", ()) for key in RECOVERY_PEERS if key in self.settings.servers]
        return targets

    def _count_steps(self) -> int:
        steps = 0
        for name in self.settings.scenarios:
            if name in LOAD_SCENARIOS:
                scenario = LOAD_SCENARIOS[name]
                steps += (len(self._servers_for(scenario)) * len(self._connections(scenario))
                          * self.settings.rounds)
            elif name == "coldstart":
                steps += len(self._peers(COLDSTART_PEERS)) * self.settings.coldstart_repeats
                steps += len(self._tier_starts())
            elif name == "recovery":
                steps += len(self._recovery_targets())
            elif name == "memory":
                steps += len(self._peers(MEMORY_PEERS)) + 1
            elif name == "overload":
                steps += len(self._peers(OVERLOAD_PEERS))
            elif name == "soak":
                steps += len(self._peers(SOAK_PEERS))
            elif name == "hosting":
                steps += len(self._peers(HOSTING_PEERS)) * len(hosting.LAYOUTS)
        return steps

    def _tier_starts(self) -> list[tuple[int, int, str]]:
        """(repeat, instances, tier) of each sfsupervisor start of `coldstart` per sandbox
        tier, in order: the tiers take turns."""
        if TIER_PEER not in self.settings.servers:
            return []
        return list(itertools.product(range(1, self.settings.tier_repeats + 1),
                                      sandbox_tiers.SIZES, sandbox_tiers.TIERS))

    def _peers(self, keys: tuple[str, ...]) -> list[Peer]:
        return [PEERS[key] for key in keys if key in self.settings.servers]

    # -- servers ---------------------------------------------------------------------------

    def _workers(self, peer: Peer) -> int:
        return self.settings.instances if peer.pooled else 1

    def _server(self, scenario: str, peer: Peer, entry: str, workers: int | None = None,
                extra: tuple[str, ...] = ()) -> contextlib.AbstractContextManager[Server]:
        """The peer serving `entry`, started, and stopped (its log scanned) on the way out."""
        workers = self._workers(peer) if workers is None else workers
        return self._started(scenario, peer, entry,
                             lambda port: peer.command(entry, port, workers, extra))

    @contextlib.contextmanager
    def _started(self, scenario: str, peer: Peer, entry: str,
                 command: Callable[[int], list[str]]) -> Iterator[Server]:
        """`command(port)` started, and stopped (its log scanned) on the way out."""
        port = free_port()
        log_path = self._work / f"{scenario}-{peer.key}-{port}.log"
        server = Server(command(port), port, log_path, entry)
        server.start()
        try:
            yield server
        finally:
            code = server.stop()
            self._note_log(scenario, peer, server, code)
            log_path.unlink(missing_ok=True)

    def _note_log(self, scenario: str, peer: Peer, server: Server, code: int | None) -> None:
        findings = probes.scan_log(server.log_path)
        if any(findings["counts"].values()) or code not in CLEAN_EXITS:
            self.results["logs"].append({"scenario": scenario, "server": peer.key,
                                         "exit_code": code, **findings})

    def _fail(self, scenario: str, peer: Peer, title: str, exc: BaseException) -> None:
        tail = getattr(exc, "log_tail", "")
        self.results["failures"].append({
            "scenario": scenario, "server": peer.key, "label": title,
            "error": f"{type(exc).__name__}: {exc}", "log_tail": tail,
            "unavailable": _is_unknown_option(exc),
        })
        self._progress.show(f"{scenario} · {title}: FAILED ({exc})")

    # -- load scenarios --------------------------------------------------------------------

    def _load_scenario(self, scenario: LoadScenario) -> None:
        """All servers up at once; each connection count measured in interleaved rounds."""
        connections = self._connections(scenario)
        with contextlib.ExitStack() as stack:
            started = [(peer, stack.enter_context(self._server(scenario.name, peer,
                                                               scenario.entry)))
                       for peer in self._servers_for(scenario)]
            contenders = [contender for peer, server in started
                          if (contender := self._prepare(scenario, peer, server, connections))]
            for count in connections:
                self._measure(scenario, contenders, count)
            for _, server in started:  # all stop at once; the stack then waits for each
                server.terminate()

    def _prepare(self, scenario: LoadScenario, peer: Peer, server: Server,
                 connections: tuple[int, ...]) -> Contender | None:
        """Check and warm up a started server; one that fails is stopped at once."""
        title = peer.title(self._workers(peer))
        self._progress.show(f"{scenario.name} · {title} · checking and warming up")
        try:
            server.wait_ready()
            self._check(scenario, server)
            probes.warm(server.port)
            if self.settings.warmup_s >= 1:
                loadgen.run(server.port, scenario.load, max(connections),
                            self.settings.warmup_s, self._work)
            _settle(server)
        except _FAILURES as exc:
            server.stop()
            self._fail(scenario.name, peer, title, exc)
            return None
        return Contender(peer, title, server)

    def _measure(self, scenario: LoadScenario, contenders: list[Contender], count: int) -> None:
        """Round after round, every live server in turn; figures combined per server."""
        rounds: dict[str, list[loadgen.Measurement]] = {c.peer.key: [] for c in contenders}
        used = {c.peer.key: cpu.CpuTimes() for c in contenders}
        total = self.settings.rounds
        for number in range(1, total + 1):
            for contender in list(contenders):
                self._progress.begin(f"{scenario.name} · {contender.title} · {count} connections"
                                     f" · round {number}/{total} · {self.settings.duration_s:g} s")
                try:
                    measured, cpu_used = self._run_once(scenario, contender, count)
                except _FAILURES as exc:
                    self._fail(scenario.name, contender.peer, contender.title, exc)
                    contenders.remove(contender)
                    continue
                rounds[contender.peer.key].append(measured)
                used[contender.peer.key] += cpu_used
        records = []
        for contender in contenders:
            measured = loadgen.combine(rounds[contender.peer.key])
            records.append(_run_record(
                scenario.name, contender, count, measured,
                [round(m.rps, 1) for m in rounds[contender.peer.key]],
                cpu.per_request_us(used[contender.peer.key], measured.requests)))
        _add_u(records)
        self.results["runs"] += records

    def _run_once(self, scenario: LoadScenario, contender: Contender,
                  count: int) -> tuple[loadgen.Measurement, cpu.CpuTimes]:
        server = contender.server
        before = cpu.read(server)
        measured = loadgen.run(server.port, scenario.load, count, self.settings.duration_s,
                               self._work)
        used = cpu.read(server) - before
        server.check_alive()
        _settle(server)
        return measured, used

    def _check(self, scenario: LoadScenario, server: Server) -> None:
        """One request by hand: the server must give the scenario's expected answer."""
        body = b'"' + b"x" * (scenario.load.body_bytes - 2) + b'"' if scenario.load.body_bytes \
            else b""
        for _ in range(5):  # the faults handler may crash on this very call
            answer = client.fetch(server.port, scenario.load.path, body)
            if answer.status == 200 and scenario.check(answer.body):
                return
        raise ServerFailed(f"unexpected answer: {answer.status} {answer.error} "
                           f"{answer.body[:200]!r}", server.log_tail())

    # -- other scenarios -------------------------------------------------------------------

    def _coldstart(self) -> None:
        self._coldstart_peers()
        self._coldstart_tiers()

    def _coldstart_peers(self) -> None:
        for peer in self._peers(COLDSTART_PEERS):
            title = peer.title(self._workers(peer))
            samples = []
            for repeat in range(self.settings.coldstart_repeats):
                self._progress.begin(f"coldstart · {title} · start {repeat + 1}")
                try:
                    with self._server("coldstart", peer, COLDSTART_ENTRY) as server:
                        samples.append(probes.coldstart(
                            server, self._workers(peer),
                            says_ready=peer.key.startswith("sfsupervisor")))
                except _FAILURES as exc:
                    self._fail("coldstart", peer, title, exc)
                    break
            if samples:
                self.results["coldstart"].append(
                    {"server": peer.key, "label": title, **_medians(samples),
                     "repeats": len(samples)})

    def _coldstart_tiers(self) -> None:
        """sfsupervisor per sandbox tier (sandbox_tiers.py); a tier that is unavailable or
        failed is not started again."""
        peer = PEERS[TIER_PEER]
        samples: sandbox_tiers.Samples = {}
        unavailable: dict[str, str] = {}
        failed: set[str] = set()
        for repeat, size, tier in self._tier_starts():
            title = sandbox_tiers.label(tier)
            self._progress.begin(f"coldstart · {title} x{size} · start {repeat}")
            if tier in unavailable or tier in failed:
                continue
            try:
                with self._server("coldstart", peer, sandbox_tiers.ENTRY, size,
                                  sandbox_tiers.options(tier)) as server:
                    samples.setdefault((tier, size), []).append(
                        sandbox_tiers.measure(server, tier))
            except _FAILURES as exc:
                if reason := sandbox_tiers.unavailable(exc):
                    unavailable[tier] = reason
                else:
                    failed.add(tier)
                    self._fail("coldstart", peer, f"{title} x{size}", exc)
        self.results["coldstart_tiers"] = sandbox_tiers.rows(samples, unavailable)

    def _recovery(self) -> None:
        for peer, suffix, extra in self._recovery_targets():
            title = f"{peer.title(RECOVERY_INSTANCES)} {suffix}".strip()
            self._progress.begin(f"recovery · {title}")
            try:
                with self._server("recovery", peer, RECOVERY_ENTRY, RECOVERY_INSTANCES,
                                  extra) as server:
                    figures = probes.recovery(server, self.settings.recovery_cycles,
                                              says_ready=peer.key.startswith("sfsupervisor"))
            except _FAILURES as exc:
                self._fail("recovery", peer, title, exc)
                continue
            self.results["recovery"].append({"server": peer.key, "label": title, **figures})

    def _memory(self) -> None:
        self._progress.begin("memory · bare interpreter")
        bare = Server([sys.executable, "-c", "import time; time.sleep(120)"], 0,
                      self._work / "bare.log", MEMORY_ENTRY)
        bare.start()
        try:
            self.results["memory"]["bare"] = probes.bare_interpreter(bare)
        finally:
            bare.stop()
        servers = self.results["memory"].setdefault("servers", [])
        for peer in self._peers(MEMORY_PEERS):
            title = peer.title(self._workers(peer))
            self._progress.begin(f"memory · {title}")
            try:
                with self._server("memory", peer, MEMORY_ENTRY) as server:
                    servers.append({"server": peer.key, "label": title,
                                    **probes.idle_memory(server)})
            except _FAILURES as exc:
                self._fail("memory", peer, title, exc)

    def _overload(self) -> None:
        for peer in self._peers(OVERLOAD_PEERS):
            title = f"{peer.title(overload.INSTANCES)} {' '.join(overload.OPTIONS)}"
            self._progress.begin(f"overload · {title} · {overload.RATE_PER_S:g} calls/s "
                                 f"for {self.settings.overload_s:g} s")
            try:
                with self._server("overload", peer, overload.ENTRY, overload.INSTANCES,
                                  overload.OPTIONS) as server:
                    figures = overload.run(server, self.settings.overload_s)
            except _FAILURES as exc:
                self._fail("overload", peer, title, exc)
                continue
            self.results["overload"].append({"server": peer.key, "label": title, **figures})

    def _soak(self) -> None:
        for peer in self._peers(SOAK_PEERS):
            title = f"{peer.title(self.settings.instances)} {' '.join(soak.OPTIONS)}"
            self._progress.begin(f"soak · {title} · {soak.clock(self.settings.soak_s)}")
            # In the results from the start: an interrupted soak keeps the samples it took.
            record: dict[str, Any] = {"server": peer.key, "label": title}
            self.results["soak"].append(record)
            try:
                with self._server("soak", peer, soak.ENTRY, extra=soak.OPTIONS) as server:
                    soak.run(server, self.settings.instances, self.settings.soak_s,
                             self.settings.soak_warmup_s, record, self._progress.show)
            except _FAILURES as exc:
                self._fail("soak", peer, title, exc)
                continue
            if failed := soak.problems(record["verdicts"]):
                self._fail("soak", peer, title, SoakFailed("; ".join(failed)))

    def _hosting(self) -> None:
        for peer in self._peers(HOSTING_PEERS):
            for layout in hosting.LAYOUTS:
                self._progress.begin(f"hosting · {layout.label}")
                config = hosting.write_config(layout, self._work)
                try:
                    with self._started("hosting", peer, hosting.ENTRY,
                                       functools.partial(hosting.command, config)) as server:
                        figures = hosting.run(server, layout, self.settings.hosting_s,
                                              self.settings.hosting_warmup_s, self._progress.show)
                except _FAILURES as exc:
                    self._fail("hosting", peer, layout.label, exc)
                    continue
                self.results["hosting"].append({"server": peer.key, **figures})
                if figures["wrong_answers"]:
                    self._fail("hosting", peer, layout.label, HostingFailed(
                        f"{figures['wrong_answers']} call(s) answered by another function"))


class SoakFailed(RuntimeError):
    """The soak ran to the end, and a verdict failed (see its record)."""


class HostingFailed(RuntimeError):
    """The hosting run ended, and some calls were answered by the wrong function."""


@dataclass(frozen=True)
class Contender:
    """A server taking part in a load scenario."""

    peer: Peer
    title: str
    server: Server


def _settle(server: Server) -> None:
    """Wait until the server has worked off what the last run left behind.

    When wrk stops, its connections close with requests still queued: a blocked event loop or a
    listen backlog serves them anyway. One answered probe, queued behind them, says they are done.
    """
    for _ in range(SETTLE_PROBES):  # the faults handler may crash on the probe itself
        if client.fetch(server.port, timeout_s=SETTLE_TIMEOUT_S).status == 200:
            break
    time.sleep(SETTLE_PAUSE_S)


def _add_u(records: list[dict[str, Any]]) -> None:
    """Each run's CPU per request in units of U: uvicorn in-process's whole CPU per request in
    the same scenario and connection count (none when uvicorn did not run)."""
    reference = next((r["cpu_us"]["total"] for r in records if r["server"] == "uvicorn"), None)
    for record in records:
        record["u_us"] = reference
        record["cpu_u"] = ({part: round(us / reference, 2) for part, us in record["cpu_us"].items()}
                           if reference else None)


def _run_record(scenario: str, contender: Contender, connections: int,
                measured: loadgen.Measurement, rounds_rps: list[float],
                cpu_us: dict[str, float]) -> dict[str, Any]:
    errors = measured.errors
    return {
        "cpu_us": cpu_us,
        "scenario": scenario, "server": contender.peer.key, "label": contender.title,
        "connections": connections, "requests": measured.requests,
        "duration_s": round(measured.duration_s, 3), "rounds_rps": rounds_rps,
        "rps": round(measured.rps, 1), "p50_ms": measured.p50_ms, "p90_ms": measured.p90_ms,
        "p99_ms": measured.p99_ms, "max_ms": measured.max_ms, "mean_ms": measured.mean_ms,
        "bad_status": measured.bad_status, "socket_errors": measured.socket_errors,
        "errors": errors,
        "error_rate": errors / max(1, measured.requests + sum(measured.socket_errors.values())),
        "flagged": errors > 0,
    }


def _medians(samples: list[dict[str, Any]]) -> dict[str, float | None]:
    medians: dict[str, float | None] = {}
    for key in samples[0]:
        values = [sample[key] for sample in samples if sample[key] is not None]
        medians[key] = statistics.median(values) if values else None
    return medians


def _is_unknown_option(exc: BaseException) -> bool:
    return getattr(exc, "returncode", None) == 2 and "unrecognized arguments" in str(
        getattr(exc, "log_tail", ""))


def _remove_tree(path: Path) -> None:
    for child in path.iterdir():
        child.unlink(missing_ok=True)
    path.rmdir()
