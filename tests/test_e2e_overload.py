"""End to end: overload with a short queue. Refusing must stay cheap: the instances keep doing
useful work while hundreds of clients are refused, and the supervisor's own paths answer
promptly while a thousand connections hammer the function.

wrk drives the load (one thread, keep-alive connections, every client retrying at once, as
impatient clients and load balancers do); a Lua hook counts the 200s. Without wrk the tests are
skipped, and fail under CI, which must install it.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_helpers import Launch, Supervisor

pytestmark = pytest.mark.timeout(60)

OPS = "ops.handler"  # its default action sleeps 0 s: a call costs only the runtime's overhead
OVERLOADED = ("--instances", "2", "--max-queue", "8")
LOAD_S = 3
FEW_CONNECTIONS = 8
MANY_CONNECTIONS = 256
# Goodput with many connections, at least, as a share of goodput with few: refusals must not
# starve the instances (a shared 2-core machine: the bound is loose on purpose).
MIN_GOODPUT_SHARE = 0.3
HAMMER_CONNECTIONS = 1024
HAMMER_S = 6
RAMP_UP_S = 1.0
# Probing stops this long before the load does, so that every probe meets the load.
PROBE_MARGIN_S = 1.0
PROBE_GAP_S = 0.1
MIN_PROBES = 9
PROBE_TIMEOUT_S = 5.0
# The goal is 100 ms; on this 2-core machine, sharing its cores with wrk's 1,024 connections,
# medians are ~1 ms and the worst probe of a run 40-65 ms (4.7 s before admission control, up to
# ~0.5 s before the 429 hold): on a loaded CI machine the bound catches a return to seconds.
PROBE_P99_LIMIT_S = 1.0
RESERVED_PATHS = ("/healthz", "/readyz", "/metrics")
COUNT_200S = """\
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) ok = 0 end
function response(status, headers, body) if status == 200 then ok = ok + 1 end end
function done(summary, latency, requests)
  local total = 0
  for _, thread in ipairs(threads) do total = total + thread:get("ok") end
  io.write(string.format("OK %d\\n", total))
end
"""


@pytest.fixture(scope="module")
def wrk_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Lua script counting 200s; skips (fails under CI) without wrk."""
    if shutil.which("wrk") is None:
        if os.environ.get("CI"):
            pytest.fail("wrk is not installed; CI must install it (see .ci/run)")
        pytest.skip("wrk is not installed (apt-get install wrk)")
    script = tmp_path_factory.mktemp("wrk") / "count_200s.lua"
    script.write_text(COUNT_200S)
    return script


def wrk(supervisor: Supervisor, script: Path, connections: int, seconds: int,
        ) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["wrk", "--threads", "1", "--connections", str(connections), "--duration", f"{seconds}s",
         "--timeout", "10s", "--script", str(script), f"http://127.0.0.1:{supervisor.port}/"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def running_wrk() -> Iterator[list[subprocess.Popen[str]]]:
    """wrk processes started by the test; killed if still running at its end."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate()


def goodput(supervisor: Supervisor, script: Path, connections: int,
            running: list[subprocess.Popen[str]]) -> float:
    """200s per second under `connections` closed-loop clients."""
    process = wrk(supervisor, script, connections, LOAD_S)
    running.append(process)
    out, err = process.communicate(timeout=LOAD_S + 30)
    found = re.search(r"^OK (\d+)$", out, re.MULTILINE)
    assert found, f"wrk said: {out}\n{err}"
    return int(found.group(1)) / LOAD_S


def test_goodput_under_overload_stays_near_capacity(
    launch_supervisor: Launch, wrk_script: Path, running_wrk: list[subprocess.Popen[str]]
) -> None:
    supervisor = launch_supervisor(OPS, *OVERLOADED)
    few = goodput(supervisor, wrk_script, FEW_CONNECTIONS, running_wrk)
    many = goodput(supervisor, wrk_script, MANY_CONNECTIONS, running_wrk)
    print(f"goodput: {few:,.0f} calls/s answered 200 with {FEW_CONNECTIONS} connections, "
          f"{many:,.0f}/s with {MANY_CONNECTIONS} ({many / few:.0%})")
    assert many >= MIN_GOODPUT_SHARE * few


def probe(port: int, path: str) -> float:
    """Seconds to a whole answer of GET `path` on a new connection; 200 required."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=PROBE_TIMEOUT_S) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    return time.monotonic() - started


def test_supervisor_paths_answer_promptly_while_1024_connections_hammer(
    launch_supervisor: Launch, wrk_script: Path, running_wrk: list[subprocess.Popen[str]]
) -> None:
    supervisor = launch_supervisor(OPS, *OVERLOADED)
    hammer = wrk(supervisor, wrk_script, HAMMER_CONNECTIONS, HAMMER_S)
    running_wrk.append(hammer)
    started = time.monotonic()
    time.sleep(RAMP_UP_S)  # not synchronisation: the load ramps up before the probes measure it
    latencies: dict[str, list[float]] = {path: [] for path in RESERVED_PATHS}
    while time.monotonic() - started < HAMMER_S - PROBE_MARGIN_S:
        for path in RESERVED_PATHS:
            latencies[path].append(probe(supervisor.port, path))
        time.sleep(PROBE_GAP_S)
    assert hammer.poll() is None, "the load ended before the probes did"
    for path, measured in latencies.items():
        print(f"{path} under {HAMMER_CONNECTIONS} connections: {len(measured)} probes, median "
              f"{statistics.median(measured) * 1000:.1f} ms, max {max(measured) * 1000:.1f} ms")
    every = sorted(seconds for measured in latencies.values() for seconds in measured)
    assert len(every) >= MIN_PROBES, latencies
    p99 = every[min(len(every) - 1, round(0.99 * len(every)))]
    assert p99 < PROBE_P99_LIMIT_S, latencies
