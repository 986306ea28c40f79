"""The printed report: one table per scenario, the probes, the targets, what went wrong."""

from __future__ import annotations

from typing import Any

from benchmarks import hosting, sandbox_tiers, soak
from benchmarks.scenarios import LOAD_SCENARIOS

TARGET_CONNECTIONS = 32
SPARE_LABEL = "--spares 1"


def render(results: dict[str, Any]) -> str:
    """The whole report as text."""
    parts = [_header(results["meta"])]
    parts += [_load_table(name, results["runs"]) for name in LOAD_SCENARIOS
              if any(run["scenario"] == name for run in results["runs"])]
    if results["coldstart"]:
        parts.append(_coldstart_table(results["coldstart"]))
    if results.get("coldstart_tiers"):
        parts.append(_tiers_table(results["coldstart_tiers"]))
    if results["recovery"]:
        parts.append(_recovery_table(results["recovery"]))
    if results["memory"].get("servers"):
        parts.append(_memory_table(results["memory"]))
    parts += [_overload_table(row) for row in results["overload"]]
    parts += [_soak_report(row) for row in results.get("soak", [])]
    if results.get("hosting"):
        parts.append(_hosting_report(results["hosting"]))
    parts.append(_targets_table(results["targets"]))
    parts += [_failures(results["failures"]), _log_findings(results["logs"])]
    return "\n\n".join(part for part in parts if part) + "\n"


def _header(meta: dict[str, Any]) -> str:
    warmup = "64 warm-up calls" + (f" and {meta['warmup_s']:g} s of load" if meta["warmup_s"]
                                   else "")
    return (f"sfsupervisor benchmarks · {meta['date']} · {meta['cpus']} CPUs "
            f"({meta['cpu_model']}) · Python {meta['python']} · {meta['wrk']}\n"
            f"{meta['mode']}: {meta['rounds']} round(s) of {meta['duration_s']:g} s per server "
            f"and connection count, servers taking turns, after {warmup}; "
            f"pools of {meta['instances']}; wrk, 1 thread, keep-alive connections\n"
            f"command: {meta['command']} (sfsupervisor at {meta['sfsupervisor_commit']}"
            f"{', ' + meta['sfsupervisor_build'] if 'sfsupervisor_build' in meta else ''})\n"
            + "\n".join(f"  {peer['label']}: {peer['note']}" for peer in meta["peers"].values()))


def _table(headings: list[str], rows: list[list[str]], left: int = 1) -> str:
    """Columns padded to fit; the first `left` ones aligned left, the rest right."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headings, *rows,
                                                                         strict=True)]
    lines = ["  ".join(str(cell).ljust(width) if index < left else str(cell).rjust(width)
                       for index, (cell, width) in enumerate(zip(row, widths, strict=True)))
             for row in [headings, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _load_table(name: str, runs: list[dict[str, Any]]) -> str:
    scenario = LOAD_SCENARIOS[name]
    mine = [run for run in runs if run["scenario"] == name]
    reference = {run["connections"]: run["rps"] for run in mine
                 if run["server"] == "sfsupervisor"}
    rows = []
    for run in sorted(mine, key=lambda r: (r["connections"], -r["rps"])):
        ours = reference.get(run["connections"])
        ratio = f"{ours / run['rps']:.2f}" if ours and run["rps"] else "-"
        rows.append([run["label"], str(run["connections"]), f"{run['rps']:,.0f}",
                     _spread(run["rounds_rps"]), ratio,
                     _ms(run["p50_ms"]), _ms(run["p90_ms"]), _ms(run["p99_ms"]),
                     _ms(run["max_ms"]), *_cpu_cells(run), _errors(run)])
    title = (f"{name}: {scenario.description}  (rounds: spread of the rounds' req/s; "
             "sfs/x: sfsupervisor's req/s over this row's; cpu: CPU per request of the main "
             "process + the workers, in µs and in U, uvicorn in-process's CPU per request)")
    return title + "\n" + _table(
        ["server", "conns", "req/s", "rounds", "sfs/x", "p50 ms", "p90 ms", "p99 ms", "max ms",
         "cpu µs", "cpu U", "errors (4xx/5xx + socket)"], rows)


def _cpu_cells(run: dict[str, Any]) -> list[str]:
    """CPU per request, main process + workers: in µs, and in U when uvicorn ran too."""
    used = run.get("cpu_us")
    if not used:
        return ["-", "-"]
    in_u = run.get("cpu_u")
    return [f"{used['main']:.0f}+{used['workers']:.0f}",
            f"{in_u['main']:.2f}+{in_u['workers']:.2f}" if in_u else "-"]


def _spread(rounds_rps: list[float]) -> str:
    """How far the rounds' req/s strayed from their mean: ±half the range, in percent."""
    mean = sum(rounds_rps) / len(rounds_rps)
    if len(rounds_rps) < 2 or not mean:
        return "-"
    return f"±{(max(rounds_rps) - min(rounds_rps)) / 2 / mean:.0%}"


def _errors(run: dict[str, Any]) -> str:
    if not run["flagged"]:
        return "0"
    sockets = sum(run["socket_errors"].values())
    return f"! {run['bad_status']} + {sockets} ({run['error_rate']:.2%})"


def _coldstart_table(rows: list[dict[str, Any]]) -> str:
    body = [[row["label"], _ms(row["first_response_ms"]), _ms(row["all_imported_ms"]),
             str(row["importers"]), _ms(row["own_all_ready_ms"]), str(row["repeats"])]
            for row in rows]
    return ("coldstart: command start → first 200 / → every importing process done "
            "(import ≈ 300 ms CPU; medians)\n" + _table(
                ["server", "first 200 ms", "all imported ms", "importers",
                 "own 'all ready' ms", "starts"], body))


def _tiers_table(rows: list[dict[str, Any]]) -> str:
    """Per tier and start size: first 200, all ready, per instance, and + per instance vs none."""
    available = [row for row in rows if row["available"]]
    sizes = sandbox_tiers.SIZES
    body = [[row["label"], *(cell for size in sizes
                             for cell in _tier_cells(row["sizes"].get(str(size)), size))]
            for row in available]
    starts = sorted({figures["starts"] for row in available for figures in row["sizes"].values()})
    text = ("coldstart per sandbox tier: hello (imports nothing), --spares 0, started with "
            f"{' and with '.join(map(str, sizes))} instances at once; ms, medians of "
            f"{'/'.join(map(str, starts))} start(s), the tiers taking turns (first 200: from the "
            "command's start; ready: the supervisor's own `all N instances ready`, from its "
            "pool's start, and its range over the starts; vs none: the difference per "
            "instance)\n")
    headings = ["server", *(heading for size in sizes for heading in _tier_headings(size))]
    text += _table(headings, body) if body else "no tier started"
    for row in rows:
        if not row["available"]:
            text += f"\nunavailable here: {row['reason']}"
    return text


def _tier_headings(size: int) -> list[str]:
    if size == 1:
        return ["x1 first 200", "x1 ready", "(range)", "x1 vs none"]
    return [f"x{size} first 200", f"x{size} all ready", "(range)", f"x{size} per instance",
            f"x{size} vs none"]


def _tier_cells(figures: dict[str, Any] | None, size: int) -> list[str]:
    if figures is None:
        return ["-"] * len(_tier_headings(size))
    low, high = figures["all_ready_range_ms"]
    cells = [_ms(figures["first_response_ms"]), _ms(figures["all_ready_ms"]),
             f"{_ms(low)}-{_ms(high)}"]
    if size > 1:
        cells.append(_ms(figures["per_instance_ms"]))
    return [*cells, _signed_ms(figures["per_instance_delta_ms"])]


def _signed_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f}"


def _recovery_table(rows: list[dict[str, Any]]) -> str:
    body = [[row["label"], _ms(row["after_crash_p50_ms"]), _ms(row["after_crash_max_ms"]),
             _ms(row["baseline_p50_ms"]), str(row["after_crash_failed"]),
             "/".join(map(str, row["crash_statuses"])), str(row["cycles"])]
            for row in rows]
    return ("recovery: one instance; a call crashes it, the next call is timed "
            "(new connection each; status 0 = connection dropped)\n" + _table(
                ["server", "after crash p50 ms", "max ms", "no crash p50 ms", "failed",
                 "crash answer", "cycles"], body))


def _memory_table(memory: dict[str, Any]) -> str:
    bare = memory["bare"]
    body = [[row["label"], str(row["workers"]), f"{row['worker_rss_mb']:.1f}",
             f"{row['worker_uss_mb']:.1f}", f"{row['main']['rss_mb']:.1f}",
             f"{row['main']['uss_mb']:.1f}", f"{row['total_uss_mb']:.1f}"]
            for row in memory["servers"]]
    body.append(["bare `python -c`", "-", f"{bare['rss_mb']:.1f}", f"{bare['uss_mb']:.1f}",
                 "-", "-", "-"])
    return ("memory: idle after 64 hello calls, MB (per worker: the mean; a single-process "
            "server is its own worker)\n" + _table(
                ["server", "workers", "worker RSS", "worker USS", "main RSS", "main USS",
                 "total USS"], body))


def _overload_table(row: dict[str, Any]) -> str:
    """One row per status received, and always one for calls with no answer (status 0)."""
    counts, latency = row["counts"], row["latency_ms"]
    statuses = sorted({*counts, "0"}, key=lambda status: (status == "0", int(status)))
    body = [[_status_name(status), f"{counts.get(status, 0):,}",
             f"{row['ok_per_s']:.1f}" if status == "200" else "-",
             *(_ms(latency[status][key]) if status in latency else "-"
               for key in ("p50", "p99", "max"))]
            for status in statuses]
    rss, metrics = row["rss_mb"], row["metrics_calls"]
    return (f"overload: {row['label']}, sleep.handler (50 ms): capacity "
            f"{row['capacity_per_s']:g} calls/s; {row['requests']:,} calls launched at "
            f"{row['offered_per_s']:g}/s for {row['duration_s']:g} s, open loop, a new "
            f"connection each, {row['call_timeout_s']:g} s deadline (sfsupervisor only: the "
            "other servers have no admission control)\n"
            + _table(["answer", "calls", "per s", "p50 ms", "p99 ms", "max ms"], body)
            + f"\nsupervisor RSS {rss['start']:.1f} MB at start, {rss['max']:.1f} max, "
            f"{rss['end']:.1f} at end ({len(rss['samples'])} samples); /metrics "
            f"sfsupervisor_calls_total during the load: ok {metrics['ok']:g}, "
            f"rejected {metrics['rejected']:g}" + _reserved_lines(row.get("reserved_ms")))


def _reserved_lines(reserved: dict[str, Any] | None) -> str:
    """How fast /healthz, /readyz and /metrics answered during the load and when hammered."""
    if not reserved:
        return ""
    lines = ""
    for key, when in (("during_load", "during the load"),
                      ("hammered", f"while wrk hammers with {reserved['hammer_connections']:,} "
                                   "connections")):
        figures = reserved.get(key)
        if not figures or not figures["probes"]:
            lines += f"\n/healthz, /readyz, /metrics {when}: not measured"
            continue
        lines += (f"\n/healthz, /readyz, /metrics {when}: {figures['probes']} probes "
                  f"({figures['not_200']} not 200), p50 {_ms(figures['p50'])} ms, "
                  f"p99 {_ms(figures['p99'])} ms, max {_ms(figures['max'])} ms")
    return lines


def _status_name(status: str) -> str:
    return "no answer" if status == "0" else status


def _soak_report(row: dict[str, Any]) -> str:
    """The samples, then the verdicts, what each behaviour got, and what /metrics counted."""
    if not row.get("samples"):
        return ""
    parts = [_soak_title(row), _soak_samples(row["samples"])]
    if not row["complete"]:
        parts.append(f"not finished (interrupted, or the server failed: see below) after "
                     f"{len(row['samples'])} samples: no verdicts")
        return "\n".join(parts)
    parts += [_soak_verdicts(row), _soak_behaviours(row), _soak_counts(row)]
    return "\n".join(parts)


def _soak_title(row: dict[str, Any]) -> str:
    mix = row["mix_per_1000"]
    good = ", ".join(f"{name} {mix[name]}" for name in ("ok", "sleep"))
    hostile = ", ".join(f"{name} {weight}" for name, weight in mix.items()
                        if name not in ("ok", "sleep"))
    capacity = row.get("capacity", {})
    return (f"soak: {row['label']}, soak.handler for {soak.clock(row['duration_s'])}: calls "
            f"launched open loop at {row.get('rate_per_s', 0):g}/s, 2x the good mix's measured "
            f"capacity of {capacity.get('measured_per_s', 0):g}/s (ideal "
            f"{capacity.get('ideal_per_s', 0):g}/s), on {row['connections']} keep-alive "
            f"connections (reopened after {soak.IDLE_RECONNECT_S:g} s idle or when the server "
            f"closed one), {row['call_timeout_s']:g} s deadline per call\n"
            f"mix per 1000 calls: good {good}; hostile {hostile}\n"
            f"supervisor every {row['sample_every_s']:g} s (fds include the client's "
            f"connections; descendants now, and the most seen in the window, polled every "
            f"second: session leaders (instances, cgroup guard), others (forked children, "
            f"detached grandchildren), zombies); answers by status in the window")


def _soak_samples(samples: list[dict[str, Any]]) -> str:
    statuses = sorted({status for sample in samples for status in sample["answers"]
                       if status != "0"}, key=int)
    body = [[("drained " if sample["phase"] == "drained" else "") + soak.clock(sample["t_s"]),
             f"{sample['rss_mb']:.1f}", str(sample["fds"]), str(sample["threads"]),
             str(sample["descendants"]), _census(sample["descendants_most"]),
             *(f"{sample['answers'].get(status, 0):,}" for status in statuses),
             f"{sample['answers'].get('0', 0):,}"]
            for sample in samples]
    return _table(["time", "RSS MB", "fds", "threads", "descendants", "most: lead/other/zombie",
                   *statuses, "lost"], body)


def _census(kinds: dict[str, int]) -> str:
    return (f"{sum(kinds.values())}: "
            f"{kinds.get('leaders', 0)}/{kinds.get('others', 0)}/{kinds.get('zombies', 0)}")


def _soak_verdicts(row: dict[str, Any]) -> str:
    found = row["verdicts"]
    lines = [f"verdicts: {'PASSED' if found['passed'] else 'FAILED'} (flatness against the "
             f"{soak.clock(found['rss']['baseline_t_s'])} sample, the first after the warm-up "
             "window)"]
    for key, what, unit in (("rss", "RSS", " MB"), ("fds", "fds", "")):
        flat = found[key]
        lines.append(
            f"  {what} flat within ±{soak.FLAT_LIMIT_PCT:g} %: {_yes(flat['flat'])}, max "
            f"deviation {flat['max_deviation_pct']:+.1f} % at {soak.clock(flat['at_t_s'])} "
            f"(baseline {flat['baseline']:g}{unit}, range {flat['min']:g}-{flat['max']:g}{unit})")
    tree = found["descendants"]
    lines += [
        f"  lost calls (no HTTP answer): {found['lost']:,} of {row['calls']:,}",
        f"  answers other than the behaviour's own or 429: {found['unexpected']:,}",
        f"  descendants ≤ {tree['bound']} (2 x {tree['at_rest']} at rest + "
        f"{soak.DESCENDANT_SLACK}): "
        f"{_yes(tree['bounded'])}, most seen {tree['max']}",
    ]
    return "\n".join(lines)


def _yes(flag: bool) -> str:
    return "yes" if flag else "NO"


def _soak_behaviours(row: dict[str, Any]) -> str:
    body = [[name, str(row["expected"][name]), f"{figures['calls']:,}",
             "  ".join(f"{_status_name(status)}: {count:,}"
                       for status, count in figures["statuses"].items()),
             ", ".join(f"{kind} {count:,}" for kind, count in figures["error_types"].items())]
            for name, figures in row["by_behaviour"].items()]
    return "by behaviour\n" + _table(["do", "expected", "calls", "answers", "error types"],
                                      body, left=1)


def _soak_counts(row: dict[str, Any]) -> str:
    latency = ", ".join(f"{_status_name(status)} {_ms(figures['p50'])}/{_ms(figures['p99'])}/"
                        f"{_ms(figures['max'])}" for status, figures in row["latency_ms"].items())
    lag = row["launch_lag_ms"]
    calls = ", ".join(f"{outcome} {count:,.0f}" for outcome, count in row["metrics_calls"].items())
    restarts = ", ".join(f"{reason} {count:,.0f}"
                         for reason, count in row["metrics_restarts"].items() if count)
    return (f"latency ms p50/p99/max by status: {latency}; launch lag (due → on a "
            f"connection) p99 {_ms(lag.get('p99'))}, max {_ms(lag.get('max'))} ms; "
            f"{row['connections_opened']:,} connections opened\n"
            f"/metrics over the soak: sfsupervisor_calls_total {calls}; "
            f"instance restarts {restarts or 'none'}")


def _hosting_report(rows: list[dict[str, Any]]) -> str:
    """The layouts side by side: one summary row each, then per function."""
    first = rows[0]
    title = (f"hosting: {first['functions']} functions on one sfsupervisor --config "
             f"(functions/hosted.py: ~5 ms of CPU to import, 5 ms per call), "
             f"{first['memory_mb']} MB each, idle_timeout {first['idle_timeout_s']:g} s; calls "
             f"from {first['connections']} keep-alive connections, closed loop, to function k "
             f"with Zipf probability (s = {first['zipf_s']:g}), {first['duration_s']:g} s after "
             f"{first['warmup_s']:g} s of warm-up. The fixed pools are always warm; their "
             "budget is raised, as they do not fit in the elastic layout's\n"
             "calls/s: until the last answer; starts: instances started (from /metrics), and "
             "per 1,000 calls; ended: instances retired or lost, by reason; RSS: the "
             "supervisor's whole process tree, summed")
    summary = [[row["label"], row["sandbox"], f"{row['calls']:,}", f"{row['calls_per_s']:,.0f}",
                _hosting_errors(row), f"{row['instance_starts']:,}",
                _per_1000(row["starts_per_1000"]), _reasons(row["instances_ended"]),
                _ms(row["latency_ms"].get("p50")), _ms(row["latency_ms"].get("p99")),
                _mean_max(row["instances"]), _mean_max(row["tree_rss_mb"])]
               for row in rows]
    return "\n".join([title, _table(
        ["layout", "sandbox", "calls", "calls/s", "errors", "starts", "per 1k calls", "ended",
         "p50 ms", "p99 ms", "instances mean/max", "RSS MB mean/max"], summary),
        _hosting_functions(rows)])


def _hosting_errors(row: dict[str, Any]) -> str:
    errors = {status: count for status, count in row["statuses"].items()
              if status != str(hosting.OK)}
    if row["wrong_answers"]:
        errors["wrong function"] = row["wrong_answers"]
    if not errors:
        return "0"
    return "! " + ", ".join(f"{_status_name(status)}: {count:,}"
                            for status, count in errors.items())


def _per_1000(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason} {count:,}" for reason, count in counts.items()) or "none"


def _mean_max(figures: dict[str, float | None]) -> str:
    if figures["mean"] is None:
        return "-"
    return f"{figures['mean']:g} / {figures['max']:g}"


def _hosting_functions(rows: list[dict[str, Any]]) -> str:
    """Per function, by Zipf rank: its share, and each layout's calls, starts and latency."""
    by_name = [{function["name"]: function for function in row["per_function"]} for row in rows]
    headings = ["function", "share"]
    for row in rows:
        headings += [f"{row['layout']} calls", "starts/1k", "p50 ms", "p99 ms"]
    body = []
    for name in hosting.NAMES:
        cells = [name, f"{by_name[0][name]['share_pct']:.1f} %"]
        for functions in by_name:
            function = functions[name]
            cells += [f"{function['calls']:,}" + (" !" if function["errors"] else ""),
                      _per_1000(function["starts_per_1000"]), _ms(function.get("p50")),
                      _ms(function.get("p99"))]
        body.append(cells)
    return "per function (! : some calls not answered 200)\n" + _table(headings, body)


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, judged on this run's figures (met: None when not measured)."""
    hello = {run["server"]: run for run in results["runs"]
             if run["scenario"] == "hello" and run["connections"] == TARGET_CONNECTIONS}
    ours = hello.get("sfsupervisor")
    ff = [hello[key] for key in ("ff", "ff-asgi") if key in hello]
    fastest_ff = max(ff, key=lambda run: run["rps"]) if ff else None
    return [
        _cpu_target("supervisor CPU per call ≤ 1.2 U", ours, "main", 1.2),
        _cpu_target("worker CPU per call ≤ 1.0 U", ours, "workers", 1.0),
        _throughput_target("≥ 2.5x gunicorn sync req/s, p99 ≤ 0.6x gunicorn's", ours,
                           hello.get("gunicorn"), 2.5, p99_factor=0.6),
        _throughput_target("≥ 1.0x functions-framework's fastest mode", ours, fastest_ff, 1.0),
        _throughput_target("≥ 0.6x uvicorn in-process", ours, hello.get("uvicorn"), 0.6),
        _recovery_target(results["recovery"]),
        _reserved_target(results["overload"]),
        _memory_target(results["memory"]),
        _tier_target("ns sandbox: instance start ≤ none's + 5 ms (median)", results, "ns", 5.0),
        _tier_target("uid sandbox: instance start ≤ none's + 2 ms (median)", results, "uid",
                     2.0),
    ]


def _cpu_target(text: str, ours: dict | None, part: str, limit_u: float) -> dict[str, Any]:
    if not ours or not ours.get("cpu_u"):
        return {"target": text, "measured": "not measured (needs uvicorn in the run)",
                "met": None}
    value = ours["cpu_u"][part]
    return {"target": text, "met": value <= limit_u, "value_u": value,
            "measured": f"{value:.2f} U ({ours['cpu_us'][part]:.0f} µs; U = "
                        f"{ours['u_us']:.0f} µs, uvicorn in-process's CPU per request)"}


def _throughput_target(text: str, ours: dict | None, peer: dict | None, factor: float,
                       p99_factor: float | None = None) -> dict[str, Any]:
    if not ours or not peer or not peer["rps"]:
        return {"target": text, "measured": "not measured", "met": None}
    ratio = ours["rps"] / peer["rps"]
    measured = f"{ratio:.2f}x {peer['label']} ({ours['rps']:,.0f} vs {peer['rps']:,.0f} req/s)"
    met = ratio >= factor
    if p99_factor is not None:
        measured += (f"; p99 {ours['p99_ms']:.2f} vs {peer['p99_ms']:.2f} ms "
                     f"({ours['p99_ms'] / peer['p99_ms']:.2f}x)")
        met = met and ours["p99_ms"] <= p99_factor * peer["p99_ms"]
    return {"target": text, "measured": measured, "met": met, "ratio": ratio}


def _recovery_target(rows: list[dict[str, Any]]) -> dict[str, Any]:
    text = "first call after a crash ≤ 5 ms with a warm spare (median)"
    spare = next((row for row in rows
                  if row["server"] == "sfsupervisor" and SPARE_LABEL in row["label"]), None)
    if spare is None or spare["after_crash_p50_ms"] is None:
        return {"target": text, "measured": "not measured (see failures)", "met": None}
    value = spare["after_crash_p50_ms"]
    return {"target": text, "met": value <= 5.0, "value_ms": value,
            "measured": f"{value:.2f} ms median, {spare['after_crash_max_ms']:.2f} ms max"}


def _reserved_target(rows: list[dict[str, Any]]) -> dict[str, Any]:
    text = "/healthz, /readyz, /metrics ≤ 100 ms under any load (p99)"
    reserved = next((row["reserved_ms"] for row in rows
                     if row["server"] == "sfsupervisor" and "reserved_ms" in row), None)
    measured = [(when, reserved[key]) for key, when in (("during_load", "overload"),
                                                       ("hammered", "1,024 connections"))
                if reserved and reserved.get(key) and reserved[key]["probes"]]
    if not measured:
        return {"target": text, "measured": "not measured", "met": None}
    worst = max(figures["p99"] for _, figures in measured)
    failed = sum(figures["not_200"] for _, figures in measured)
    return {"target": text, "met": worst <= 100.0 and not failed, "value_ms": worst,
            "measured": "; ".join(f"{when}: p99 {figures['p99']:.1f} ms, max "
                                  f"{figures['max']:.1f} ms" for when, figures in measured)
                        + (f"; {failed} probe(s) not answered 200" if failed else "")}


def _memory_target(memory: dict[str, Any]) -> dict[str, Any]:
    text = "idle instance RSS ≤ bare interpreter + 8 MB"
    ours = next((row for row in memory.get("servers", []) if row["server"] == "sfsupervisor"),
                None)
    if ours is None or "bare" not in memory:
        return {"target": text, "measured": "not measured", "met": None}
    extra = ours["worker_rss_mb"] - memory["bare"]["rss_mb"]
    return {"target": text, "met": extra <= 8.0, "extra_mb": extra,
            "measured": f"{ours['worker_rss_mb']:.1f} MB vs {memory['bare']['rss_mb']:.1f} MB "
                        f"bare: +{extra:.1f} MB"}


def _tier_target(text: str, results: dict[str, Any], tier: str,
                 limit_ms: float) -> dict[str, Any]:
    """Judged on one instance's start; the per-instance cost of 8 at once is shown too."""
    row = next((row for row in results.get("coldstart_tiers", []) if row["tier"] == tier), None)
    if row is None or not row["available"]:
        reason = f"unavailable here: {row['reason']}" if row else "not measured"
        return {"target": text, "measured": reason, "met": None}
    one = row["sizes"].get("1")
    if one is None or one["per_instance_delta_ms"] is None:
        return {"target": text, "measured": "not measured (see failures)", "met": None}
    value, ready_ms = one["per_instance_delta_ms"], one["all_ready_ms"]
    measured = f"{value:+.1f} ms ({ready_ms:.0f} ms vs none's {ready_ms - value:.0f} ms)"
    many = [(size, figures) for size, figures in row["sizes"].items() if size != "1"
            and figures["per_instance_delta_ms"] is not None]
    measured += "".join(f"; {figures['per_instance_delta_ms']:+.1f} ms each of {size} at once"
                        for size, figures in many)
    return {"target": text, "met": value <= limit_ms, "delta_ms": value, "measured": measured}


def _targets_table(rows: list[dict[str, Any]]) -> str:
    verdicts = {True: "met", False: "MISSED", None: "n/a"}
    body = [[verdicts[row["met"]], row["target"], row["measured"]] for row in rows]
    return f"targets (hello, {TARGET_CONNECTIONS} connections)\n" + _table(
        ["verdict", "target", "measured"], body, left=3)


def _failures(failures: list[dict[str, Any]]) -> str:
    if not failures:
        return ""
    lines = ["failures:"]
    for failure in failures:
        kind = "not available" if failure["unavailable"] else "FAILED"
        lines.append(f"  {failure['scenario']} · {failure['label']}: {kind}: {failure['error']}")
    return "\n".join(lines)


def _log_findings(findings: list[dict[str, Any]]) -> str:
    if not findings:
        return ""
    lines = ["server logs with warnings, errors or tracebacks (first lines in the JSON):"]
    for finding in findings:
        counts = ", ".join(f"{count} {kind}" for kind, count in finding["counts"].items()
                           if count)
        lines.append(f"  {finding['scenario']} · {finding['server']}: {counts or 'none'}; "
                     f"exit code {finding['exit_code']}")
    return "\n".join(lines)
