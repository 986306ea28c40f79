"""CPU per request of a server under load: its main process, and its other processes (workers).

The figure that predicts how far a server scales is its CPU per request, not its req/s on a
shared 2-core machine: one sfsupervisor process serves every call, so 1 / (its CPU per call)
caps its throughput whatever the core count. Figures are compared in units of U, the CPU per
request of uvicorn serving the handler in-process, measured in the same run (this machine's
speed moves by 2x from one hour to the next; ratios within a run hold).

CPU is psutil's user + system time, read before and after a measured window. A worker that ends
during the window (a crash, a recycle) is counted through its parent's children_* times, which
the kernel adds once the parent reaps it; processes that are not workers (sfsupervisor's guard)
are left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil

from benchmarks.servers import Server

# Command-line marks of a server's helper processes, which serve no request.
HELPERS = ("supervisor.guard",)


@dataclass(frozen=True)
class CpuTimes:
    """CPU seconds of a server's main process and of its workers."""

    main_s: float = 0.0
    workers_s: float = 0.0

    def __sub__(self, other: CpuTimes) -> CpuTimes:
        return CpuTimes(self.main_s - other.main_s, self.workers_s - other.workers_s)

    def __add__(self, other: CpuTimes) -> CpuTimes:
        return CpuTimes(self.main_s + other.main_s, self.workers_s + other.workers_s)


def read(server: Server) -> CpuTimes:
    """The CPU the server's processes have used so far (zero once it is gone)."""
    try:
        main = psutil.Process(server.pid)
        times = main.cpu_times()
        children = main.children(recursive=True)
    except psutil.Error:
        return CpuTimes()
    workers_s = times.children_user + times.children_system  # those already reaped
    for child in children:
        try:
            if any(mark in " ".join(child.cmdline()) for mark in HELPERS):
                continue
            child_times = child.cpu_times()
        except psutil.Error:
            continue  # gone meanwhile: its parent's children_* times will count it
        workers_s += child_times.user + child_times.system
    return CpuTimes(times.user + times.system, workers_s)


def per_request_us(used: CpuTimes, requests: int) -> dict[str, float]:
    """Microseconds of CPU per request: main process, workers, and the whole server."""
    requests = max(1, requests)
    return {"main": round(used.main_s / requests * 1e6, 1),
            "workers": round(used.workers_s / requests * 1e6, 1),
            "total": round((used.main_s + used.workers_s) / requests * 1e6, 1)}
