"""End to end: many functions on one server (--config FILE.toml), as the platform hosts them.

Routing by the platform's URL (/{name}, /{name}/anything, 404 NotFound for others), instances
started on demand within each function's max and the host's budget, least recently used idle
instances of other functions retired to make room, idle instances retired down to
min_instances, a per-function interpreter, reloads (SIGHUP and `sfsupervisor reload`) that add,
remove and roll functions with no failed call, and a broken function that costs only its own.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_helpers import (
    FUNCTIONS_DIR,
    PYTHON_M_SUPERVISOR,
    Launch,
    Supervisor,
    ok_json,
    scrape_metrics,
)

pytestmark = pytest.mark.timeout(60)

FUNCTIONS = str(FUNCTIONS_DIR)


def function_table(name: str, entry: str = "hosted.handler", directory: str = FUNCTIONS,
                   **settings: Any) -> str:
    lines = [f"[functions.{name}]", f'dir = "{directory}"', f'entry = "{entry}"']
    for key, value in settings.items():
        if isinstance(value, dict):
            pairs = ", ".join(f'{k} = "{v}"' for k, v in value.items())
            lines.append(f"{key} = {{ {pairs} }}")
        elif isinstance(value, str):
            lines.append(f'{key} = "{value}"')
        else:
            lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


def write_config(path: Path, *tables: str, **server: Any) -> Path:
    server_lines = "".join(f"{key} = {value}\n" for key, value in server.items())
    path.write_text(f"[server]\nlog_format = \"json\"\n{server_lines}" + "".join(tables))
    return path


def call(supervisor: Supervisor, path: str, **params: Any) -> httpx.Response:
    return supervisor.request("GET", path, params=params)


def instances_of(supervisor: Supervisor, function: str, state: str | None = None) -> float:
    labels = {"function": function, **({"state": state} if state else {})}
    return scrape_metrics(supervisor).value("sfsupervisor_instances", **labels)


def live_instances(supervisor: Supervisor, function: str) -> float:
    return sum(instances_of(supervisor, function, state) for state in ("starting", "idle", "busy"))


def launch_hosting(launch: Launch, config: Path) -> Supervisor:
    supervisor = launch("", config=config, wait_instances=False)
    supervisor.wait_until(lambda: supervisor.request("GET", "/healthz").status_code == 200,
                          "/healthz 200")
    return supervisor


# -- routing -----------------------------------------------------------------------------------


def test_calls_go_to_the_function_their_path_names(launch_supervisor: Launch,
                                                    tmp_path: Path) -> None:
    config = write_config(tmp_path / "hosting.toml", function_table("alpha"),
                          function_table("beta", memory=64))
    supervisor = launch_hosting(launch_supervisor, config)
    assert ok_json(call(supervisor, "/alpha"))["function"] == "alpha"
    assert ok_json(call(supervisor, "/alpha/any/path/below"))["function"] == "alpha"
    beta = ok_json(call(supervisor, "/beta", x="1"))
    assert beta["function"] == "beta" and beta["memory"] == 64
    raw = supervisor.request("POST", "/beta", params={"integration": "raw"}, content=b"hi")
    assert raw.text == "raw:beta:hi"
    for path in ("/gamma", "/", "/alphabet"):
        missing = call(supervisor, path)
        assert missing.status_code == 404, path
        assert missing.json()["errorType"] == "NotFound"
        assert "X-Function-Error" not in missing.headers
    assert call(supervisor, "/healthz").status_code == 200
    scrape = scrape_metrics(supervisor)
    assert scrape.label_values("sfsupervisor_calls_total", "function") == {"alpha", "beta"}
    assert scrape.value("sfsupervisor_calls_total", function="beta", outcome="ok") == 2


# -- elastic instances -------------------------------------------------------------------------


def test_an_instance_starts_for_a_call_and_reports_its_init(launch_supervisor: Launch,
                                                            tmp_path: Path) -> None:
    config = write_config(tmp_path / "hosting.toml", function_table("lazy"))
    supervisor = launch_hosting(launch_supervisor, config)
    assert live_instances(supervisor, "lazy") == 0
    response = call(supervisor, "/lazy")
    assert response.status_code == 200
    request_id = response.headers["X-Request-Id"]
    records = supervisor.wait_for_reports([request_id])
    report = next(r["message"] for r in records
                  if str(r.get("message", "")).startswith(f"REPORT RequestID: {request_id}"))
    assert "Function Init Duration" in report
    assert live_instances(supervisor, "lazy") == 1


def test_instances_follow_demand_and_idle_ones_retire_to_min(launch_supervisor: Launch,
                                                             tmp_path: Path) -> None:
    config = write_config(tmp_path / "hosting.toml",
                          function_table("elastic", min_instances=1, max_instances=3,
                                         idle_timeout=1))
    supervisor = launch_hosting(launch_supervisor, config)
    supervisor.wait_until(lambda: instances_of(supervisor, "elastic", "idle") == 1,
                          "min_instances kept")
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda _: ok_json(call(supervisor, "/elastic", seconds=1)),
                                range(3)))
    assert len({answer["identity"] for answer in answers}) == 3
    supervisor.wait_until(lambda: live_instances(supervisor, "elastic") == 1,
                          "idle instances retired down to min_instances", timeout_s=10)
    assert scrape_metrics(supervisor).value("sfsupervisor_instance_restarts_total",
                                            function="elastic", reason="idle") == 2


def test_at_the_host_budget_the_lru_idle_instance_of_another_function_goes(
    launch_supervisor: Launch, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "hosting.toml",
                          *(function_table(name, max_instances=1) for name in ("a", "b", "c")),
                          max_instances=2)
    supervisor = launch_hosting(launch_supervisor, config)
    assert call(supervisor, "/a").status_code == 200
    assert call(supervisor, "/b").status_code == 200  # a is now the least recently used
    assert call(supervisor, "/c").status_code == 200
    assert live_instances(supervisor, "a") == 0
    assert live_instances(supervisor, "b") == 1 and live_instances(supervisor, "c") == 1
    assert scrape_metrics(supervisor).value("sfsupervisor_instance_restarts_total",
                                            function="a", reason="evicted") == 1
    assert scrape_metrics(supervisor).value("sfsupervisor_host_instances") <= 2


def test_with_every_instance_busy_a_call_waits_for_room_or_gets_429(
    launch_supervisor: Launch, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "hosting.toml",
                          function_table("busy", max_instances=1),
                          function_table("patient", max_instances=1),
                          function_table("hasty", max_instances=1, timeout=0.5),
                          max_instances=1)
    supervisor = launch_hosting(launch_supervisor, config)
    with ThreadPoolExecutor(2) as pool:
        holder = pool.submit(call, supervisor, "/busy", seconds=1.5)
        supervisor.wait_until(lambda: instances_of(supervisor, "busy", "busy") == 1,
                              "the host's one instance busy")
        refused = call(supervisor, "/hasty")
        assert refused.status_code == 429
        assert refused.json()["errorType"] == "TooManyRequests"
        started = time.monotonic()
        patient = call(supervisor, "/patient")
        assert holder.result().status_code == 200
    assert patient.status_code == 200  # served once busy's instance went idle and was retired
    assert time.monotonic() - started < 5


def test_two_busy_functions_sharing_one_slot_take_turns_without_thrashing(
    launch_supervisor: Launch, tmp_path: Path
) -> None:
    """Each caller calls again at once: an instance evicted as soon as it went idle would be
    started again for almost every call. Waiting up to a start time before evicting lets each
    function serve a run of calls per start, and both callers still get served."""
    config = write_config(tmp_path / "hosting.toml",
                          function_table("left", max_instances=1),
                          function_table("right", max_instances=1), max_instances=1)
    supervisor = launch_hosting(launch_supervisor, config)
    calls_each = 30

    def caller(name: str) -> list[int]:
        return [call(supervisor, f"/{name}", seconds=0.005).status_code
                for _ in range(calls_each)]

    with ThreadPoolExecutor(2) as pool:
        callers = [pool.submit(caller, name) for name in ("left", "right")]
        statuses = [status for done in callers for status in done.result()]
    assert statuses == [200] * 2 * calls_each
    metrics = scrape_metrics(supervisor)
    evictions = sum(metrics.value("sfsupervisor_instance_restarts_total", function=name,
                                  reason="evicted") for name in ("left", "right"))
    assert 1 <= evictions <= calls_each // 3, evictions


# -- per-function interpreter ------------------------------------------------------------------


def test_a_function_runs_on_its_own_interpreter(launch_supervisor: Launch, tmp_path: Path,
                                                shared_dir: Path) -> None:
    venv = shared_dir / "venv"  # readable to the sandbox uid, unlike tmp_path
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages",
                    str(venv)], check=True, timeout=60)
    config = write_config(tmp_path / "hosting.toml",
                          function_table("own", python=str(venv / "bin" / "python")),
                          function_table("ours"))
    supervisor = launch_hosting(launch_supervisor, config)
    assert ok_json(call(supervisor, "/own"))["prefix"] == str(venv)
    assert ok_json(call(supervisor, "/ours"))["prefix"] == sys.prefix


def test_an_interpreter_without_what_the_worker_needs_stops_the_command(tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True,
                   timeout=60)
    config = write_config(tmp_path / "hosting.toml",
                          function_table("bare", python=str(bare / "bin" / "python")))
    done = check(config)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert "functions.bare.python" in done.stderr and "pip install msgpack" in done.stderr


# -- checking and reloading the file -----------------------------------------------------------


def check(config: Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    argv = [*PYTHON_M_SUPERVISOR, "--check"] + ([] if cwd else ["--config", str(config)])
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False,
                          cwd=cwd)


@pytest.mark.parametrize(("table", "named"), [
    (function_table("x", memory=0), "functions.x.memory"),
    (function_table("x", memry=1), "functions.x.memry: unknown key"),
    (function_table("x", entry="nope.handler"), "no nope.py"),
    (function_table("x", min_instances=3, max_instances=2), "functions.x.min_instances"),
    (function_table("Bad_Name"), "functions.Bad_Name"),
    ("[functions.x]\nentry = \"hosted.handler\"\n", "functions.x.dir: required"),
    ("[functions.x\n", "not valid TOML"),
])
def test_check_refuses_a_bad_file_in_one_line_naming_the_key(tmp_path: Path, table: str,
                                                             named: str) -> None:
    done = check(write_config(tmp_path / "bad.toml", table))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and named in done.stderr, done.stderr


def test_check_accepts_a_good_file_found_in_the_working_directory(tmp_path: Path) -> None:
    write_config(tmp_path / "sfsupervisor.toml", function_table("alpha"), port=0)
    done = check(tmp_path / "sfsupervisor.toml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "ok: 1 function(s)" in done.stdout and "/alpha: hosted.handler" in done.stdout


def test_a_reload_adds_removes_and_rolls_functions_with_no_failed_call(
    launch_supervisor: Launch, tmp_path: Path
) -> None:
    path = tmp_path / "hosting.toml"
    write_config(path, function_table("kept", max_instances=2),
                 function_table("leaving", max_instances=2), max_instances=6)
    supervisor = launch_hosting(launch_supervisor, path)
    results: dict[str, list[tuple[int, str]]] = {"kept": [], "leaving": [], "coming": []}
    stop = threading.Event()

    def load(name: str) -> None:
        while not stop.is_set():
            response = call(supervisor, f"/{name}", seconds=0.02)
            version = response.json().get("version", "") if response.status_code == 200 else ""
            results[name].append((response.status_code, version))

    with ThreadPoolExecutor(3) as pool:
        loaders = [pool.submit(load, name) for name in results]
        supervisor.wait_until(lambda: len(results["kept"]) > 10, "steady load")
        write_config(path, function_table("kept", max_instances=2, env={"HOSTED_VERSION": "two"}),
                     function_table("coming"), max_instances=6)
        reloaded = subprocess.run([*PYTHON_M_SUPERVISOR, "reload", "--config", str(path)],
                                  capture_output=True, text=True, timeout=30, check=False)
        assert reloaded.returncode == 0, reloaded.stderr
        supervisor.wait_until(lambda: results["kept"][-5:] == [(200, "two")] * 5,
                              "kept on its new settings")
        supervisor.wait_until(lambda: results["coming"][-1:] == [(200, "one")], "coming served")
        supervisor.wait_until(lambda: results["leaving"][-1:][0][0] == 404, "leaving gone")
        stop.set()
        for loader in loaders:
            loader.result()
    assert {status for status, _ in results["kept"]} == {200}
    assert {status for status, _ in results["leaving"]} <= {200, 404}
    assert {status for status, _ in results["coming"]} <= {200, 404}
    assert live_instances(supervisor, "leaving") == 0


def test_sighup_with_a_broken_file_keeps_serving(launch_supervisor: Launch,
                                                 tmp_path: Path) -> None:
    path = write_config(tmp_path / "hosting.toml", function_table("steady"))
    supervisor = launch_hosting(launch_supervisor, path)
    assert call(supervisor, "/steady").status_code == 200
    path.write_text("[functions.steady\n")
    supervisor.send_signal_alive(signal.SIGHUP)
    supervisor.wait_for_text("still serving the functions as they were")
    assert call(supervisor, "/steady").status_code == 200


# -- a broken function -------------------------------------------------------------------------


def test_a_broken_function_costs_only_its_own_calls(launch_supervisor: Launch,
                                                    tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "hosting.toml", function_table("good", max_instances=2),
        function_table("unimportable", entry="hostile_import_raises.handler"),
        function_table("crashing", entry="hostile.handler"),
        function_table("slow", entry="hostile.handler", timeout=0.5),
        max_instances=8)
    supervisor = launch_hosting(launch_supervisor, config)
    latencies: list[float] = []
    stop = threading.Event()

    def good_calls() -> None:
        while not stop.is_set():
            started = time.monotonic()
            assert call(supervisor, "/good").status_code == 200
            latencies.append(time.monotonic() - started)

    def hostile(path: str, status: int, **params: Any) -> Callable[[], None]:
        def run() -> None:
            for _ in range(5):
                assert call(supervisor, path, **params).status_code == status
        return run

    with ThreadPoolExecutor(4) as pool:
        good = pool.submit(good_calls)
        bad = [pool.submit(hostile("/unimportable", 502)),
               pool.submit(hostile("/crashing", 502, do="os_exit")),
               pool.submit(hostile("/slow", 504, do="loop"))]
        for future in bad:
            future.result()
        stop.set()
        good.result()
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    print(f"good calls: {len(latencies)}, p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, "
          f"p99 {p99 * 1000:.1f} ms")
    assert len(latencies) > 20 and p99 < 0.5


def test_a_metric_per_function_and_the_budget(launch_supervisor: Launch, tmp_path: Path) -> None:
    config = write_config(tmp_path / "hosting.toml", function_table("one", memory=64),
                          function_table("two", memory=96), max_instances=4, max_memory_mb=512)
    supervisor = launch_hosting(launch_supervisor, config)
    for name in ("one", "two"):
        assert call(supervisor, f"/{name}").status_code == 200
    scrape = scrape_metrics(supervisor)
    assert scrape.value("sfsupervisor_host_instances") == 2
    assert scrape.value("sfsupervisor_host_memory_bytes") == (64 + 96) << 20
    assert re.search(r"serving 2 function\(s\) on http://\S+ within 4 instance\(s\) and 512 MB",
                     supervisor.log_text())


def test_the_example_config_is_good() -> None:
    example = FUNCTIONS_DIR.parent.parent / "examples" / "hosting" / "sfsupervisor.toml"
    done = check(example)
    assert done.returncode == 0, done.stderr
    assert "/hello: index.handler" in done.stdout and "/echo: main.handler" in done.stdout
