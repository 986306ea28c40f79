"""The chart: per scenario, throughput and p50/p99 latency of every server, side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from benchmarks.scenarios import LOAD_SCENARIOS

COLORS = {"uvicorn": "#9e9e9e", "gunicorn": "#e07b39", "ff": "#4c72b0", "ff-asgi": "#8172b3",
          "sfsupervisor": "#2ca02c", "sfsupervisor-quiet": "#98df8a"}
BAR_SPAN = 0.8


def draw(results: dict[str, Any], path: Path) -> None:
    """Write the PNG: one row per load scenario, req/s on the left, latency on the right."""
    names = [name for name in LOAD_SCENARIOS
             if any(run["scenario"] == name for run in results["runs"])]
    figure = Figure(figsize=(14, 3.1 * max(1, len(names))))
    axes = figure.subplots(max(1, len(names)), 2, squeeze=False)
    for row, name in zip(axes, names, strict=False):
        runs = [run for run in results["runs"] if run["scenario"] == name]
        _bars(row[0], runs, name, latency=False)
        _bars(row[1], runs, name, latency=True)
    handles = [Rectangle((0, 0), 1, 1, color=color) for color in COLORS.values()]
    labels = [_label(results, key) for key in COLORS]
    shown = [(h, label) for h, label in zip(handles, labels, strict=True) if label]
    top = 1 - 0.75 / figure.get_figheight()
    if shown:
        figure.legend(*zip(*shown, strict=True), loc="upper center", ncol=len(shown),
                      fontsize=9, frameon=False, bbox_to_anchor=(0.5, top + 0.35 /
                                                                figure.get_figheight()))
    meta = results["meta"]
    figure.suptitle(f"sfsupervisor and its peers: {meta['mode']} on {meta['cpus']} CPUs, "
                    f"{meta['date']} (black tick: p99; hatched: the run had errors)",
                    y=1 - 0.05 / figure.get_figheight(), fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, top))
    figure.savefig(path, dpi=100)


def _label(results: dict[str, Any], key: str) -> str:
    return next((run["label"] for run in results["runs"] if run["server"] == key), "")


def _bars(axis: Any, runs: list[dict[str, Any]], name: str, latency: bool) -> None:
    counts = sorted({run["connections"] for run in runs})
    servers = [key for key in COLORS if any(run["server"] == key for run in runs)]
    width = BAR_SPAN / max(1, len(servers))
    for index, key in enumerate(servers):
        mine = {run["connections"]: run for run in runs if run["server"] == key}
        xs = [group + (index - (len(servers) - 1) / 2) * width
              for group, count in enumerate(counts) if count in mine]
        present = [mine[count] for count in counts if count in mine]
        values = [run["p50_ms"] if latency else run["rps"] for run in present]
        axis.bar(xs, values, width, color=COLORS[key],
                 hatch=["//" if run["flagged"] else "" for run in present])
        if latency:
            axis.scatter(xs, [run["p99_ms"] for run in present], marker="_", color="black",
                         s=120, zorder=3)
    axis.set_xticks(range(len(counts)), [f"{count} conn" for count in counts])
    if latency:
        axis.set_yscale("log")
        axis.set_ylabel("p50 latency, ms (log)")
    else:
        axis.set_ylabel("req/s")
    axis.set_title(f"{name}: {LOAD_SCENARIOS[name].description}", fontsize=9)
    axis.grid(axis="y", alpha=0.3)
