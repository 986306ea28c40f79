"""`python -m benchmarks [SCENARIO ...] [--quick] [--out DIR]`: run, print, write JSON and PNG."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from benchmarks import chart, loadgen, report
from benchmarks.scenarios import (
    ALL_SERVERS,
    EXPLICIT_SCENARIOS,
    QUIET_SFSUPERVISOR,
    SCENARIO_NAMES,
)
from benchmarks.servers import PEERS, REPO_ROOT, stop_all
from benchmarks.suite import Settings, Suite
from supervisor import http11

DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results"
# Full runs measure each server and connection count in 3 interleaved rounds of 3 s, so that
# a slow minute of a shared machine does not land on one server only.
FULL = {"duration_s": 3.0, "rounds": 3, "warmup_s": 2.0, "coldstart_repeats": 3,
        "recovery_cycles": 10, "overload_s": 8.0, "soak_s": 600.0, "soak_warmup_s": 5.0,
        "tier_repeats": 5, "hosting_s": 30.0, "hosting_warmup_s": 5.0}
# Quick runs warm up with a burst of calls only (wrk's shortest run is a whole second).
QUICK = {"duration_s": 1.0, "rounds": 1, "warmup_s": 0.0, "coldstart_repeats": 1,
         "recovery_cycles": 3, "overload_s": 3.0, "soak_s": 20.0, "soak_warmup_s": 2.0,
         "tier_repeats": 1, "hosting_s": 3.0, "hosting_warmup_s": 1.0}
CHOICES = (*SCENARIO_NAMES, *EXPLICIT_SCENARIOS)


def main(argv: list[str] | None = None) -> None:
    """Run the suite; exit 1 when a server failed a scenario, 130 when interrupted."""
    args = _parser().parse_args(argv)
    if not loadgen.available():
        _quit("wrk is not installed: `apt-get install wrk` (see benchmarks/README.md)")
    settings = _settings(args)
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    commit = _commit()
    suite = Suite(settings)
    interrupted = False
    try:
        suite.run()
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: servers stopped, writing what was measured", file=sys.stderr)
    finally:
        stop_all()
    meta = _meta(settings, time.monotonic() - started, interrupted, commit)
    results = {"meta": meta, **suite.results}
    results["targets"] = report.targets(results)
    _write(results, Path(args.out))
    if interrupted:
        sys.exit(130)
    if any(not failure["unavailable"] for failure in results["failures"]):
        sys.exit(1)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Load-test sfsupervisor side by side with uvicorn, gunicorn and "
                    "functions-framework on loopback; print a table, write JSON and a PNG.")
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                        help=f"what to run (default: all but {', '.join(EXPLICIT_SCENARIOS)}): "
                             f"{', '.join(CHOICES)}")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: short runs, 32 connections only (under 2 minutes)")
    parser.add_argument("--out", default=str(DEFAULT_OUT),
                        help="where results.json and results.png go (default: %(default)s)")
    parser.add_argument("--servers", default=None,
                        help=f"comma-separated subset of {', '.join(PEERS)}")
    parser.add_argument("--instances", type=int, default=4,
                        help="pool size of gunicorn and sfsupervisor (default: %(default)s)")
    parser.add_argument("--duration", type=int, default=None,
                        help="seconds per measured round (default: 3, quick: 2)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds per server and connection count (default: 3, quick: 1)")
    parser.add_argument("--soak-minutes", type=float, default=None,
                        help="how long `soak` runs (default: 10, quick: 1/3)")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    scenarios = tuple(args.scenarios) or SCENARIO_NAMES
    unknown = [name for name in scenarios if name not in CHOICES]
    if unknown:
        _quit(f"unknown scenario(s) {', '.join(unknown)}: choose from {', '.join(CHOICES)}")
    if args.servers:
        servers = tuple(key.strip() for key in args.servers.split(","))
        unknown = [key for key in servers if key not in PEERS]
        if unknown:
            _quit(f"unknown server(s) {', '.join(unknown)}: choose from {', '.join(PEERS)}")
    else:
        servers = ALL_SERVERS if args.quick else (*ALL_SERVERS, QUIET_SFSUPERVISOR)
    timing = dict(QUICK if args.quick else FULL)
    if args.duration is not None:
        timing["duration_s"] = args.duration
    if args.rounds is not None:
        timing["rounds"] = args.rounds
    if args.soak_minutes is not None:
        if args.soak_minutes <= 0:
            _quit("--soak-minutes must be more than 0")
        timing["soak_s"] = args.soak_minutes * 60
    return Settings(scenarios=scenarios, servers=servers, instances=args.instances,
                    quick=args.quick, **timing)


def _meta(settings: Settings, elapsed_s: float, interrupted: bool,
          commit: str) -> dict[str, Any]:
    at_end = _commit()
    return {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "mode": "quick run" if settings.quick else "full run",
        "command": " ".join(["python -m benchmarks", *sys.argv[1:]]),
        "cpus": os.cpu_count(), "cpu_model": _cpu_model(), "python": platform.python_version(),
        "wrk": loadgen.version(), "instances": settings.instances,
        "duration_s": settings.duration_s, "rounds": settings.rounds,
        "warmup_s": settings.warmup_s,
        "scenarios": list(settings.scenarios), "servers": list(settings.servers),
        "elapsed_s": round(elapsed_s, 1), "interrupted": interrupted,
        "sfsupervisor_commit": commit if at_end == commit else f"{commit}, then {at_end}",
        "sfsupervisor_build": _build(),
        "peers": {key: {"label": PEERS[key].title(settings.instances), "note": PEERS[key].note}
                  for key in settings.servers},
    }


def _commit() -> str:
    """The product's commit, `+changes` when supervisor/ or worker/ differ from it.

    Each scenario starts sfsupervisor afresh: when the code changes during a run, later
    scenarios measure the new code, and the report names both commits.
    """
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                              check=False)
        return done.stdout.strip()
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + (" +changes" if git("status", "--porcelain", "supervisor", "worker") else "")


def _build() -> str:
    """Whether the supervisor's per-call modules run compiled (setup.py) or as Python."""
    return "compiled with mypyc" if http11.__file__.endswith(".so") else "pure Python"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _write(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    text = report.render(results)
    (out / "results.txt").write_text(text)
    chart.draw(results, out / "results.png")
    print(text)
    print(f"wrote {out / 'results.json'}, {out / 'results.txt'} and {out / 'results.png'} "
          f"in {results['meta']['elapsed_s']:g} s")


def _interrupt(signum: int, frame: FrameType | None) -> NoReturn:
    raise KeyboardInterrupt


def _quit(message: str) -> NoReturn:
    print(f"benchmarks: {message}", file=sys.stderr)
    sys.exit(2)
