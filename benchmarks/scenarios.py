"""The scenarios: which handler each serves, what load drives it, and which servers take part."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from benchmarks.loadgen import Load

PAYLOAD_BYTES = 1024 * 1024
ALL_SERVERS = ("uvicorn", "gunicorn", "ff", "ff-asgi", "sfsupervisor")
# sfsupervisor with --log-level warning: the cost of its per-call log lines, for `hello` only.
QUIET_SFSUPERVISOR = "sfsupervisor-quiet"
ISOLATING_SERVERS = ("gunicorn", "ff", "ff-asgi", "sfsupervisor")


def _says_hello(body: bytes) -> bool:
    return body == b"Hello, world!"


@dataclass(frozen=True)
class LoadScenario:
    """A closed-loop throughput scenario run with wrk at each connection count."""

    name: str
    entry: str
    description: str
    connections: tuple[int, ...]
    quick_connections: tuple[int, ...]
    load: Load = field(default_factory=Load)
    servers: tuple[str, ...] = ALL_SERVERS
    check: Callable[[bytes], bool] = lambda body: bool(body)


LOAD_SCENARIOS = {
    scenario.name: scenario for scenario in (
        LoadScenario("hello", "hello.handler", "trivial handler: pure overhead",
                     (1, 32, 256), (32,), servers=(*ALL_SERVERS, QUIET_SFSUPERVISOR),
                     check=_says_hello),
        LoadScenario("cpu", "cpu.handler", "~5 ms of CPU per call", (1, 32), (32,)),
        LoadScenario("sleep", "sleep.handler", "50 ms sleep per call", (1, 32), (32,),
                     check=lambda body: body == b"slept"),
        LoadScenario("payload", "payload.handler", "1 MB JSON body in, 1 MB out", (1, 32), (32,),
                     load=Load(body_bytes=PAYLOAD_BYTES),
                     check=lambda body: len(body) == PAYLOAD_BYTES),
        LoadScenario("async", "wait.handler", "async handler awaiting 20 ms", (1, 32), (32,),
                     check=lambda body: body == b"waited"),
        # One crash stops a server with no isolation for good: uvicorn in-process sits it out.
        LoadScenario("faults", "faults.handler", "hello, but 1 % of calls crash their process",
                     (32,), (32,), servers=ISOLATING_SERVERS, check=_says_hello),
    )
}
COLDSTART_ENTRY = "slow_import.handler"
RECOVERY_ENTRY = "crash.handler"
MEMORY_ENTRY = "hello.handler"
OTHER_SCENARIOS = ("coldstart", "recovery", "memory", "overload")
# What runs when no scenario is named.
SCENARIO_NAMES = (*LOAD_SCENARIOS, *OTHER_SCENARIOS)
# Run only when named, and no part of CI's smoke run: `soak` takes 10 minutes, `hosting` is a
# mode of sfsupervisor's alone (many functions on one server) and takes over a minute.
EXPLICIT_SCENARIOS = ("soak", "hosting")
