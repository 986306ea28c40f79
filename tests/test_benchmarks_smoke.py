"""Smoke test of the benchmark suite: `python -m benchmarks --quick` runs every scenario against
every server, each of them answers, and the JSON and the chart are written. No speed assertion:
the figures of a shared machine say nothing about correctness."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
EVERY_SERVER = {"uvicorn", "gunicorn", "ff", "ff-asgi", "sfsupervisor"}
LOAD_SCENARIOS = {"hello", "cpu", "sleep", "payload", "async", "faults"}
SANDBOX_TIERS = {"none", "uid", "ns"}
BENCH_MODULES = ("gunicorn", "functions_framework", "matplotlib")
RUN_TIMEOUT_S = 200
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _require(ready: bool, what: str) -> None:
    """Missing tools fail the test in CI (an install step is missing) and skip it elsewhere."""
    if ready:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} is not installed; CI must install it to run the benchmark smoke test")
    pytest.skip(f"{what} is not installed (see benchmarks/README.md)")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The outcome of one `python -m benchmarks --quick` into a fresh directory."""
    _require(shutil.which("wrk") is not None, "wrk (apt-get install wrk)")
    for module in BENCH_MODULES:
        _require(importlib.util.find_spec(module) is not None,
                 f"{module} (pip install -e '.[bench]')")
    out = tmp_path_factory.mktemp("bench")
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
                          check=False)
    assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return out, json.loads((out / "results.json").read_text())


@pytest.mark.timeout(RUN_TIMEOUT_S + 30)
def test_every_server_answers_every_scenario(quick_run: tuple[Path, dict]) -> None:
    _, results = quick_run
    assert [f for f in results["failures"] if not f["unavailable"]] == []
    answered = {(run["scenario"], run["server"]) for run in results["runs"]
                if run["requests"] > 0}
    assert {server for _, server in answered} == EVERY_SERVER
    assert {scenario for scenario, _ in answered} == LOAD_SCENARIOS
    assert {row["server"] for row in results["coldstart"]} == EVERY_SERVER
    # Each tier started, or reported unavailable on this machine.
    assert {row["tier"] for row in results["coldstart_tiers"]} == SANDBOX_TIERS
    assert {row["server"] for row in results["memory"]["servers"]} == EVERY_SERVER
    assert results["memory"]["bare"]["rss_mb"] > 0
    assert {row["server"] for row in results["recovery"]} >= EVERY_SERVER - {"uvicorn"}


@pytest.mark.timeout(RUN_TIMEOUT_S + 30)
def test_results_are_written(quick_run: tuple[Path, dict]) -> None:
    out, results = quick_run
    assert results["meta"]["mode"] == "quick run"
    assert len(results["targets"]) == 10
    reserved = next(row for row in results["targets"] if row["target"].startswith("/healthz"))
    assert reserved["met"] is not None, reserved  # probed during the overload and hammered
    hello = {run["server"]: run for run in results["runs"] if run["scenario"] == "hello"}
    assert hello["uvicorn"]["cpu_u"]["total"] == 1.0  # U is uvicorn's CPU per request
    assert hello["sfsupervisor"]["cpu_us"]["main"] > 0
    assert hello["sfsupervisor"]["cpu_us"]["workers"] > 0
    assert (out / "results.png").read_bytes().startswith(PNG_MAGIC)
    assert "targets" in (out / "results.txt").read_text()


@pytest.mark.timeout(RUN_TIMEOUT_S + 30)
def test_no_server_is_left_running(quick_run: tuple[Path, dict]) -> None:
    # Peers name benchmarks/ on their command line; sfsupervisor's workers run in functions/.
    markers = ("benchmarks.peers", "benchmarks/peers", "benchmarks/functions")
    functions_dir = str(REPO_ROOT / "benchmarks" / "functions")
    survivors = []
    for process in psutil.process_iter(["pid", "cmdline", "cwd"]):
        command = " ".join(process.info["cmdline"] or [])
        if any(marker in command for marker in markers) or process.info["cwd"] == functions_dir:
            survivors.append(f"{process.info['pid']}: {command}")
    assert survivors == []


@pytest.mark.timeout(10)
def test_the_log_scan_counts_lines_by_their_level(tmp_path: Path) -> None:
    """A 499's INFO line quotes the word ERROR; it is no error. Other servers' lines, without
    our level field, still count by the words they hold."""
    from benchmarks.probes import scan_log

    log = tmp_path / "server.log"
    log.write_bytes(
        b"2026-12-07T13:13:29.242Z INFO    [7 a-b] ERROR RequestID: a-b Code: 499 Message: x\n"
        b"2026-12-07T13:13:29.243Z ERROR   [7 c-d] ERROR RequestID: c-d Code: 502 Message: y\n"
        b"2026-12-07T13:13:29.244Z WARNING [7] instance 7 answered call 3 again\n"
        b"[2026-12-07 13:13:29 +0000] [12] [ERROR] Worker timeout (pid:13)\n"
        b"Traceback (most recent call last):\n")
    assert scan_log(log)["counts"] == {"warning": 1, "error": 2, "traceback": 1}
