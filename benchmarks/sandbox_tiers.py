"""Cold start per sandbox tier: what `--sandbox uid` and `--sandbox ns` add to an instance start.

sfsupervisor `--sandbox none`, `uid` and `ns`, `--spares 0`, started with one instance and with
SIZES[-1] at once, serving `hello` (it imports nothing, so that what is timed is the runtime's
own start: the worker's process, interpreter and sealing). Per start: command start → first 200,
and the supervisor's own `all N instances ready in X ms`, from its pool's start to the N-th
instance's READY, so without the supervisor's own start and sandbox probe. The startup line
must name the tier asked for. One instance: its start's latency. N at once on the machine's
cores: all-ready / N, what each costs when they start together. Medians over the repeats, the
tiers taking turns so that a slow minute of a shared machine is spread over all of them; each
tier's difference with `none` per instance. A tier the machine cannot give (the supervisor
exits 2 saying why) is reported unavailable, not failed.
"""

from __future__ import annotations

import re
import statistics
from typing import Any

from benchmarks import probes
from benchmarks.servers import Server, ServerFailed

TIERS = ("none", "uid", "ns")
SIZES = (1, 8)
ENTRY = "hello.handler"
BASELINE = "none"
# The startup line ends with `..., sandbox ns (namespaces per instance, its own uid)`.
IN_EFFECT = re.compile(rb", sandbox (ns|uid|none)\b")
UNAVAILABLE = re.compile(r"^sfsupervisor: error: (--sandbox .*)$", re.MULTILINE)
TIER_UNAVAILABLE_EXIT = 2

Samples = dict[tuple[str, int], list[dict[str, float]]]


def options(tier: str) -> tuple[str, ...]:
    """sfsupervisor's options for a start in `tier`."""
    return ("--sandbox", tier, "--spares", "0")


def label(tier: str) -> str:
    """E.g. `sfsupervisor --sandbox ns --spares 0`."""
    return f"sfsupervisor {' '.join(options(tier))}"


def measure(server: Server, tier: str) -> dict[str, float]:
    """Command start → first 200, and the supervisor's own all-ready figure, in ms."""
    first_s = server.wait_ready()
    in_effect = probes.wait_for(server, IN_EFFECT, 1)[0].decode()
    if in_effect != tier:
        raise ServerFailed(f"asked for --sandbox {tier}, the startup line says sandbox "
                           f"{in_effect}", server.log_tail())
    all_ready_ms = float(probes.wait_for(server, probes.ALL_READY, 1)[0])
    return {"first_response_ms": first_s * 1000, "all_ready_ms": all_ready_ms}


def unavailable(exc: BaseException) -> str | None:
    """Why the tier cannot work here, when the supervisor exited saying so; else None."""
    if getattr(exc, "returncode", None) != TIER_UNAVAILABLE_EXIT:
        return None
    found = UNAVAILABLE.search(getattr(exc, "log_tail", ""))
    return found.group(1) if found else None


def rows(samples: Samples, unavailable_tiers: dict[str, str]) -> list[dict[str, Any]]:
    """One row per tier: per size, the medians, the range of all-ready, per instance, and the
    difference with none."""
    medians = {key: _medians(values) for key, values in samples.items() if values}
    table = []
    for tier in TIERS:
        if tier in unavailable_tiers:
            table.append({"tier": tier, "available": False, "reason": unavailable_tiers[tier]})
            continue
        sizes = {str(size): _size_figures(samples[tier, size], medians[tier, size],
                                          medians.get((BASELINE, size)), size)
                 for size in SIZES if (tier, size) in medians}
        table.append({"tier": tier, "available": True, "label": label(tier), "sizes": sizes})
    return table


def _medians(values: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(value[key] for value in values) for key in values[0]}


def _size_figures(starts: list[dict[str, float]], mine: dict[str, float],
                  baseline: dict[str, float] | None, size: int) -> dict[str, Any]:
    """The medians, the range of all-ready over the starts, and per instance."""
    per_instance = mine["all_ready_ms"] / size
    delta = per_instance - baseline["all_ready_ms"] / size if baseline else None
    ready = [start["all_ready_ms"] for start in starts]
    return {**mine, "all_ready_range_ms": [min(ready), max(ready)],
            "per_instance_ms": per_instance, "per_instance_delta_ms": delta,
            "starts": len(starts)}
