"""wrk, the closed-loop load generator: keep-alive connections, latency percentiles, errors.

One Lua script per kind of request: an optional request setup (method, headers, body) and a
`done` hook that prints the summary as one JSON line, so nothing is parsed from wrk's prose.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
from dataclasses import dataclass
from pathlib import Path

from benchmarks import client

WRK = "wrk"
RESULT_MARK = "BENCH-RESULT "
# wrk's own client timeout; a request slower than this is counted as a timeout error.
REQUEST_TIMEOUT_S = 10
_DONE_HOOK = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "%s{\\"requests\\": %d, \\"duration_us\\": %d, \\"bytes\\": %d, \\"connect\\": %d, "
    .. "\\"read\\": %d, \\"write\\": %d, \\"status\\": %d, \\"timeout\\": %d, "
    .. "\\"p50_us\\": %d, \\"p90_us\\": %d, \\"p99_us\\": %d, \\"max_us\\": %d, "
    .. "\\"mean_us\\": %.1f}\\n",
    "MARK", summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean))
end
""".replace("MARK", RESULT_MARK)


@dataclass(frozen=True)
class Load:
    """What wrk sends: a GET, or a POST of a JSON body of `body_bytes` bytes."""

    path: str = "/"
    body_bytes: int = 0

    def script(self) -> str:
        """The Lua script for this load."""
        if not self.body_bytes:
            return _DONE_HOOK
        return (
            'wrk.method = "POST"\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = '\"' .. string.rep(\"x\", {self.body_bytes - 2}) .. '\"'\n"
            + _DONE_HOOK
        )


@dataclass(frozen=True)
class Measurement:
    """One wrk run's figures; latencies in milliseconds."""

    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    bad_status: int
    socket_errors: dict[str, int]

    @property
    def errors(self) -> int:
        """Every request that did not end in a 2xx/3xx answer."""
        return self.bad_status + sum(self.socket_errors.values())


def available() -> bool:
    """True when wrk is on PATH."""
    return shutil.which(WRK) is not None


def version() -> str:
    """wrk's version line."""
    done = subprocess.run([WRK, "--version"], capture_output=True, text=True, check=False)
    return (done.stdout or done.stderr).partition(" Copyright")[0].strip()


def run(port: int, load: Load, connections: int, duration_s: float,
        script_dir: Path) -> Measurement:
    """Drive the server at 127.0.0.1:port with `connections` keep-alive connections."""
    script = script_dir / f"load-{load.body_bytes}.lua"
    if not script.exists():
        script.write_text(load.script())
    command = [WRK, "--threads", "1", "--connections", str(connections),
               "--duration", f"{max(1, round(duration_s))}s",
               "--timeout", f"{REQUEST_TIMEOUT_S}s", "--script", str(script),
               f"http://{client.HOST}:{port}{load.path}"]
    done = subprocess.run(command, capture_output=True, text=True, check=False,
                          timeout=duration_s + REQUEST_TIMEOUT_S + 30)
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            return _measurement(json.loads(line.removeprefix(RESULT_MARK)))
    raise RuntimeError(f"wrk failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")


def combine(rounds: list[Measurement]) -> Measurement:
    """Several runs as one: counts add up, latency percentiles are the rounds' medians."""
    requests = sum(m.requests for m in rounds)
    duration_s = sum(m.duration_s for m in rounds)
    return Measurement(
        requests=requests,
        duration_s=duration_s,
        rps=requests / duration_s if duration_s else 0.0,
        p50_ms=statistics.median(m.p50_ms for m in rounds),
        p90_ms=statistics.median(m.p90_ms for m in rounds),
        p99_ms=statistics.median(m.p99_ms for m in rounds),
        max_ms=max(m.max_ms for m in rounds),
        mean_ms=sum(m.mean_ms * m.requests for m in rounds) / max(1, requests),
        bad_status=sum(m.bad_status for m in rounds),
        socket_errors={kind: sum(m.socket_errors[kind] for m in rounds)
                       for kind in rounds[0].socket_errors},
    )


def _measurement(raw: dict[str, float]) -> Measurement:
    duration_s = raw["duration_us"] / 1e6
    return Measurement(
        requests=int(raw["requests"]),
        duration_s=duration_s,
        rps=raw["requests"] / duration_s if duration_s else 0.0,
        p50_ms=raw["p50_us"] / 1000,
        p90_ms=raw["p90_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
        mean_ms=raw["mean_us"] / 1000,
        bad_status=int(raw["status"]),
        socket_errors={kind: int(raw[kind]) for kind in ("connect", "read", "write", "timeout")},
    )
