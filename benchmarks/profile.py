"""`python -m benchmarks.profile`: where sfsupervisor's supervisor spends its time under `hello`.

Starts sfsupervisor (4 instances, default options) on the hello handler, drives it with wrk at
32 connections, samples the supervisor process with py-spy (`pip install py-spy`), and prints
the functions that hold the most samples: by themselves (self) and with what they call
(inclusive, sfsupervisor's own code only), plus the supervisor's context switches per request.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

from benchmarks import loadgen, probes
from benchmarks.scenarios import LOAD_SCENARIOS
from benchmarks.servers import PEERS, Server, free_port, stop_all

OUR_CODE = ("supervisor/", "worker/")


def main(argv: list[str] | None = None) -> None:
    """Profile and print the report."""
    args = _parser().parse_args(argv)
    py_spy = _py_spy()
    scenario = LOAD_SCENARIOS["hello"]
    with tempfile.TemporaryDirectory(prefix="sfs-profile-") as work:
        port = free_port()
        server = Server(PEERS["sfsupervisor"].command(scenario.entry, port, args.instances, ()),
                        port, Path(work) / "server.log", scenario.entry)
        server.start()
        try:
            server.wait_ready()
            probes.warm(port)
            stacks, measured, usage = _record(py_spy, server, args, Path(work))
        finally:
            stop_all()
    per_call = {key: value / measured.requests for key, value in usage.items()}
    print(f"{measured.rps:,.0f} req/s while sampled (p99 {measured.p99_ms:.2f} ms); per request: "
          f"supervisor CPU {per_call['supervisor_cpu_s'] * 1e6:.0f} µs, workers' CPU "
          f"{per_call['workers_cpu_s'] * 1e6:.0f} µs, supervisor context switches "
          f"{per_call['voluntary']:.2f} voluntary, {per_call['involuntary']:.2f} involuntary")
    print(render(stacks, args.top))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__)
    parser.add_argument("--seconds", type=int, default=10, help="sampling time")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--instances", type=int, default=4)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=20, help="rows per table")
    return parser


def _py_spy() -> str:
    beside = Path(sys.executable).with_name("py-spy")
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None or not loadgen.available():
        sys.exit("benchmarks.profile needs py-spy (pip install py-spy) and wrk")
    return found


def _record(py_spy: str, server: Server, args: argparse.Namespace,
            work: Path) -> tuple[Counter[str], loadgen.Measurement, dict[str, float]]:
    """Run wrk in a thread while py-spy samples the supervisor for the middle of the run."""
    results: list[loadgen.Measurement] = []
    load = threading.Thread(target=lambda: results.append(loadgen.run(
        server.port, LOAD_SCENARIOS["hello"].load, args.connections, args.seconds + 2, work)))
    before = _usage(server)
    load.start()
    raw = work / "profile.raw"
    subprocess.run([py_spy, "record", "--pid", str(server.pid), "--duration", str(args.seconds),
                    "--rate", str(args.rate), "--nonblocking", "--format", "raw",
                    "--output", str(raw)],
                   check=True, capture_output=True, timeout=args.seconds + 60)
    load.join()
    after = _usage(server)
    return _parse(raw.read_text()), results[0], {k: after[k] - before[k] for k in after}


def _usage(server: Server) -> dict[str, float]:
    """CPU seconds of the supervisor and of its workers, and the supervisor's context switches."""
    supervisor, *workers = server.processes()
    times = supervisor.cpu_times()
    switches = supervisor.num_ctx_switches()
    return {
        "supervisor_cpu_s": times.user + times.system,
        "workers_cpu_s": sum(sum(w.cpu_times()[:2]) for w in workers),
        "voluntary": switches.voluntary,
        "involuntary": switches.involuntary,
    }


def _parse(text: str) -> Counter[str]:
    stacks: Counter[str] = Counter()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack:
            stacks[stack] += int(count)
    return stacks


def _function(frame: str) -> str:
    """`name (path/file.py:123)` to `path/file.py:name`, lines folded together."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rpartition(":")[0]
    return f"{path}:{name}"


def render(stacks: Counter[str], top: int) -> str:
    """Self and inclusive shares of the samples, by function."""
    total = sum(stacks.values()) or 1
    own: Counter[str] = Counter()
    by_file: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for stack, count in stacks.items():
        functions = [_function(frame) for frame in stack.split(";")]
        own[functions[-1]] += count
        by_file[functions[-1].rpartition(":")[0]] += count
        for function in set(functions):
            inclusive[function] += count
    ours = [(f, n) for f, n in inclusive.most_common()
            if f.startswith(OUR_CODE) and not f.endswith((":main", ":run", ":<module>"))]
    lines = [f"{total} samples; self time by function (any code):"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    lines.append("self time by file:")
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in by_file.most_common(top)]
    lines.append("inclusive time, sfsupervisor's own functions:")
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in ours[:top]]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
