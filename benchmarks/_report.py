"""The report: rich tables on the terminal, JSON, and PNG plots (matplotlib, Agg backend).

``python -m benchmarks._report benchmarks/results/results.json`` redraws the PNGs from saved results.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from rich.console import Console
from rich.table import Table

__all__ = ["figures", "plot", "print_tables", "readable", "write_json"]


def _f(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:,.{digits}f}"
    return str(value)


def _interval(row: dict[str, Any]) -> str:
    """A row's 95 % interval of its median ratio ("-" in results saved before it was reported)."""
    low, high = row.get("ratio_ci95") or (None, None)
    return "-" if low is None else f"{low:.3f}-{high:.3f}"


def print_tables(report: dict[str, Any], console: Console | None = None) -> None:
    """One table per scenario that ran."""
    console = console or Console()
    if "overhead" in report:
        table = Table(title="1. Overhead: time per turn (median of interleaved repeats in fresh processes)")
        target = report["overhead"].get("target_ratio", 1.05)
        columns = ("members", "contestant", "us/turn", "ratio to RR (median)", "95% interval", "min", "max")
        for column in (*columns, f"<= {target:.2f}"):
            table.add_column(column, justify="right")
        for r in report["overhead"]["results"]:
            table.add_row(
                str(r["members"]), r["contestant"], _f(r["us_per_turn"], 0), _f(r["ratio_to_round_robin"], 3),
                _interval(r), _f(r["ratio_min"], 3), _f(r["ratio_max"], 3), _f(r["meets_target"]),
            )  # fmt: skip
        console.print(table)
    if "cascade" in report:
        cascade = report["cascade"]
        slots = sum(cascade.get("limits", {}).values())
        table = Table(
            title=f"2. Cascade: K = {cascade.get('k', '?')} concurrent runs of {cascade.get('turns_per_run', '?')} "
            f"turns, {slots} true slots; median of {cascade.get('repeats', 1)} interleaved repeats, counts from the "
            "worst"
        )
        columns = ("service", "contestant", "turns/s", "of limit", "of measured", "calls/turn", "429s", "failed runs")
        for column in (*columns, "p50 s", "p99 s", "peak/limit", "Jain", "CPU", "targets"):
            table.add_column(column, justify="right")
        for r in cascade["results"]:
            verdict = r.get("targets")
            met = (
                "-"
                if verdict is None
                else (
                    "all met"
                    if all(verdict.values())
                    else "missed: " + ", ".join(k for k, v in verdict.items() if not v)
                )
            )
            table.add_row(
                f"{r.get('service_ms', '?')} ms", r["contestant"], _f(r["goodput_turns_s"], 1),
                _f(r["goodput_ratio"], 3), _f(r["goodput_ratio_measured_service"], 3),
                _f(r.get("amplification_max", r["amplification"]), 3),
                str(r.get("rejected_429_max", r["rejected_429"])), str(r.get("runs_failed_max", r["runs_failed"])),
                _f(r["run_latency_p50_s"]), _f(r["run_latency_p99_s"]), _f(r["peak_over_limit"], 1),
                _f(r["jain"], 3), _f(r["cpu_busy"]), met,
            )  # fmt: skip
        console.print(table)
    if "scale" in report:
        scale = report["scale"]
        table = Table(title=f"3. Scale: {scale['keys']:,} keys in the ledger")
        for column in ("members", "contestant", "us/turn", "selection us", "peak MiB (build + run)"):
            table.add_column(column, justify="right")
        for r in scale["results"]:
            table.add_row(
                str(r["members"]), r["contestant"], _f(r["us_per_turn"], 0), _f(r["selection_us"], 0),
                _f(r["peak_bytes_build_and_run"] / 2**20),
            )  # fmt: skip
        console.print(table)
        growth = scale["growth_100_to_1000"]
        console.print(
            f"growth {scale['sizes'][0]:,} -> {scale['sizes'][1]:,} members: "
            f"ours {growth['ours_headroom']:.1f}x, RoundRobinGroupChat "
            f"{growth['round_robin']:.1f}x (ratio {scale['growth_ratio_ours_to_autogen']:.2f}); "
            f"ledger {scale['ledger_bytes_per_key']:.0f} B/key; target met: {_f(scale['meets_target'])}"
        )
    if "ledger" in report:
        table = Table(title="4. Ledger: acquire + release pairs")
        for column in ("ledger", "tasks", "pairs/s", "p50 ms", "p99 ms"):
            table.add_column(column, justify="right")
        for r in report["ledger"]["results"]:
            table.add_row(r["ledger"], str(r["tasks"]), _f(r["ops_s"], 0), _f(r["p50_ms"], 3), _f(r["p99_ms"], 3))
        console.print(table)
        if report["ledger"].get("open_loop"):
            table = Table(title="4. Ledger: RedisLedger, open loop (pairs started at a fixed rate, <= 64 in flight)")
            for column in ("offered/s", "gc.freeze()", "pairs/s", "p50 ms", "p99 ms", "max ms"):
                table.add_column(column, justify="right")
            for r in report["ledger"]["open_loop"]:
                table.add_row(
                    _f(r["offered_s"], 0), "yes" if r["gc_frozen"] else "no", _f(r["ops_s"], 0), _f(r["p50_ms"], 3),
                    _f(r["p99_ms"], 3), _f(r["max_ms"], 1),
                )  # fmt: skip
            console.print(table)
        console.print(f"targets met: in-memory {_f(report['ledger']['memory_meets_target'])}, "
                      f"Redis {_f(report['ledger']['redis_meets_target'])}")  # fmt: skip
        if report["ledger"]["note"]:
            console.print(report["ledger"]["note"])
    if "real_agents" in report:
        real = report["real_agents"]
        table = Table(
            title=f"5. Real agents: {real['members']} AssistantAgents, {real['reply_chars']}-character replies "
            "(median of interleaved repeats in fresh processes)"
        )
        columns = (
            "turns", "contestant", "s/run", "us/turn", "ratio to RR (median)", "95% interval", "min", "max",
            "CPU ratio", "page faults/run",
        )  # fmt: skip
        for column in (*columns, "<= 1.05"):
            table.add_column(column, justify="right")
        for r in real["results"]:
            table.add_row(
                str(r["turns"]), r["contestant"], _f(r["s_per_run"], 3), _f(r["us_per_turn"], 0),
                _f(r["ratio_to_round_robin"], 3), _interval(r), _f(r["ratio_min"], 3), _f(r["ratio_max"], 3),
                _f(r["cpu_ratio_to_round_robin"], 3), _f(r.get("page_faults_per_run"), 0), _f(r["meets_target"]),
            )  # fmt: skip
        console.print(table)
    if "distributed" in report:
        dist = report["distributed"]
        table = Table(title="6. Distributed: the cascade (ours_exact) on one process, RedisLedger vs InMemoryLedger")
        columns = ("K", "memory of limit", "Redis of limit", "Redis / memory", "scripts/turn", "round trips/turn")
        for column in (*columns, "CPU memory", "CPU Redis", ">= 0.75"):
            table.add_column(column, justify="right")
        for r in dist["results"]:
            table.add_row(
                str(r["k"]), _f(r["memory_goodput_ratio"], 3), _f(r["redis_goodput_ratio"], 3),
                _f(r["redis_to_memory"], 3), _f(r["scripts_per_turn"], 1), _f(r["round_trips_per_turn"], 2),
                _f(r["memory_cpu_busy"]), _f(r["redis_cpu_busy"]), _f(r["meets_target"]),
            )  # fmt: skip
        console.print(table)
        if dist["note"]:
            console.print(dist["note"])
    if "adaptive" in report:
        adaptive = report["adaptive"]
        table = Table(
            title=f"8. Live capacity: true limit 3, K = {adaptive['k']} workers, {adaptive['seconds']:.0f} simulated s"
        )
        for column in ("declared", "adaptive", "turns/s", "429s/turn", "calls/turn", "of exact", "3->6: live>=5 s"):
            table.add_column(column, justify="right")
        table.add_column("6->2: 429s stop s", justify="right")
        for r in adaptive["results"]:
            table.add_row(
                str(r["declared"]), _f(r["adaptive"]), _f(r["goodput_turns_s"]), _f(r["throttled_per_turn"], 3),
                _f(r["calls_per_turn"], 3), _f(r.get("goodput_vs_exact"), 3), _f(r.get("rise_to_5_s"), 1),
                _f(r.get("drop_429s_stop_s"), 1),
            )  # fmt: skip
        console.print(table)
        for target, met in adaptive["results"][0]["targets"].items():
            console.print(f"target {target}: {'met' if met else 'MISSED'}")
    if "priorities" in report:
        for part in ("mixed", "fail_fast", "starvation"):
            row = report["priorities"][part]
            table = Table(title=f"7. Priorities and deadlines: {part.replace('_', ' ')}")
            table.add_column("measure")
            table.add_column("value", justify="right")
            for name, value in row.items():
                if name == "targets":
                    for target, met in value.items():
                        table.add_row(f"target: {target}", "met" if met else "MISSED")
                else:
                    table.add_row(name, _f(value, 3))
            console.print(table)
    if "instructions" in report:
        counted = report["instructions"]
        table = Table(title="9. Instructions per turn (callgrind), ratio to RoundRobinGroupChat")
        for column in ("scenario", "members", "turns/run", "contestant", "instructions/turn", "ratio to RR"):
            table.add_column(column, justify="right")
        for r in counted["results"]:
            table.add_row(
                r["scenario"], str(r["members"]), str(r["turns_per_run"]), r["contestant"],
                f"{r['instructions_per_turn']:,}", _f(r["ratio_to_round_robin"], 4),
            )  # fmt: skip
        console.print(table)
        if counted["note"]:
            console.print(counted["note"])
    if "retention" in report:
        kept = report["retention"]
        table = Table(
            title=f"10. Retention: {kept['turns']}-turn real-agent runs, stock AutoGen and with link_future holding "
            "weakly (fresh processes in pairs)"
        )
        for column in ("links", "contestant", "s/run", "ratio to RR (median)", "95% interval", "page faults/run"):
            table.add_column(column, justify="right")
        for r in kept["results"]:
            table.add_row(
                r["mode"], r["contestant"], _f(r["s_per_run"], 3), _f(r["ratio_to_round_robin"], 3), _interval(r),
                _f(r["page_faults_per_run"], 0),
            )  # fmt: skip
        console.print(table)


def write_json(report: dict[str, Any], out: Path) -> Path:
    """``results.json`` in ``out``."""
    path = out / "results.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return path


NAMES = {
    "round_robin": "RoundRobinGroupChat",
    "selector": "SelectorGroupChat",
    "ours_headroom": "CapacityAwareGroupChat, headroom routing",
    "ours_round_robin": "CapacityAwareGroupChat, round-robin routing",
    "ours_exact": "CapacityAwareGroupChat, exact contracts",
    "ours_overstated": "CapacityAwareGroupChat, overstated contracts",
    "memory": "InMemoryLedger",
    "redis": "RedisLedger",
}
"""Readable names for the benchmark's internal contestant and ledger names."""

WIDTH_IN, HEIGHT_IN, DPI = 11.0, 6.0, 110
"""Figures are 1210 x 660 px: legible at the docs' column width, and on their own."""


def readable(name: str) -> str:
    """The name a reader knows for an internal contestant name."""
    return NAMES.get(name, name.replace("_", " "))


def _figure(title: str, panels: int) -> tuple[Figure, list[Axes]]:
    fig = plt.figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI, layout="constrained")
    axes = [fig.add_subplot(1, panels, i + 1) for i in range(panels)]
    fig.suptitle(title, fontsize=13, fontweight="bold")
    for ax in axes:
        ax.grid(True, which="major", alpha=0.3)
    return fig, axes


def _legend(fig: Figure, axes: list[Axes]) -> None:
    """One legend for the figure, below the panels, so it hides no data."""
    handles: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncols=min(len(handles), 3), fontsize=9)


def _log_ticks(ax: Axes, values: list[int]) -> None:
    """Ticks at the measured sizes (4, 64, 256), written as plain numbers, on a log axis."""
    ax.set_xticks(sorted(set(values)), [str(v) for v in sorted(set(values))])
    ax.minorticks_off()


def _dodge(values: list[int], index: int, count: int) -> list[float]:
    """Shift one series a little along a log axis so that overlapping error bars stay apart."""
    factor = 1.0 + 0.03 * (index - (count - 1) / 2)
    return [v * factor for v in values]


def _target(ax: Axes, y: float, label: str) -> None:
    ax.axhline(y, color="red", linestyle="--", linewidth=1.2, label=label)


def _overhead_figure(overhead: dict[str, Any]) -> Figure:
    rows = overhead["results"]
    repeats = max((r.get("repeats", 1) for r in rows), default=1)
    processes = max((r.get("processes", 1) for r in rows), default=1)
    intervals = all("ratio_ci95" in r for r in rows)  # results saved before it was reported: min to max
    fig, (ax,) = _figure("Overhead: time per turn relative to RoundRobinGroupChat (scripted members, no waits)", 1)
    kinds = list(dict.fromkeys(r["contestant"] for r in rows))
    for index, kind in enumerate(kinds):
        mine = [r for r in rows if r["contestant"] == kind]
        ratios = [r["ratio_to_round_robin"] for r in mine]
        bounds = [
            r["ratio_ci95"] if intervals else (r.get("ratio_min", m), r.get("ratio_max", m))
            for r, m in zip(mine, ratios, strict=True)
        ]
        spread = [
            [max(m - low, 0) for (low, _), m in zip(bounds, ratios, strict=True)],
            [max(high - m, 0) for (_, high), m in zip(bounds, ratios, strict=True)],
        ]
        members = _dodge([r["members"] for r in mine], index, len(kinds))
        ax.errorbar(members, ratios, yerr=spread, marker="o", capsize=4, label=readable(kind))
    _target(ax, overhead["target_ratio"], f"target: at most {overhead['target_ratio']:.2f}x RoundRobinGroupChat")
    ax.set(
        xscale="log",
        xlabel="members in the team (log scale)",
        ylabel="time per turn / RoundRobinGroupChat's (ratio)",
        title=f"median of {repeats} interleaved repeats in {processes} processes; bars: "
        f"{'95% interval of the median' if intervals else 'min to max'} (series shifted apart slightly)",
    )
    _log_ticks(ax, [r["members"] for r in rows])
    _legend(fig, [ax])
    return fig


def _cascade_figure(cascade: dict[str, Any]) -> Figure:
    rows = cascade["results"]
    targets = cascade.get("targets", {})
    slots = sum(cascade.get("limits", {}).values())
    repeats = cascade.get("repeats", 1)
    fig, (goodput, amplification) = _figure(
        f"Cascade: K = {cascade.get('k', '?')} concurrent runs of {cascade.get('turns_per_run', '?')} turns "
        f"against {slots} true slots (limits {', '.join(str(v) for v in cascade.get('limits', {}).values())})",
        2,
    )
    services = list(dict.fromkeys(r["service_ms"] for r in rows))
    kinds = list(dict.fromkeys(r["contestant"] for r in rows))
    width = 0.8 / max(len(kinds), 1)
    for index, kind in enumerate(kinds):
        mine = {r["service_ms"]: r for r in rows if r["contestant"] == kind}
        xs = [i + (index - (len(kinds) - 1) / 2) * width for i, s in enumerate(services) if s in mine]
        cells = [mine[s] for s in services if s in mine]
        ratios = [r["goodput_ratio"] for r in cells]
        per_repeat = [r.get("goodput_ratio_per_repeat") or [m] for r, m in zip(cells, ratios, strict=True)]
        spread = [
            [max(m - min(p), 0) for p, m in zip(per_repeat, ratios, strict=True)],
            [max(max(p) - m, 0) for p, m in zip(per_repeat, ratios, strict=True)],
        ]
        goodput.bar(xs, ratios, width, yerr=spread, capsize=3, label=readable(kind), color=f"C{index}")
        calls = [r.get("amplification_max", r["amplification"]) for r in cells]
        finite = [c for c in calls if math.isfinite(c)]
        amplification.bar(
            [x for x, c in zip(xs, calls, strict=True) if math.isfinite(c)], finite, width, label=readable(kind),
            color=f"C{index}",
        )  # fmt: skip
        for x, c in zip(xs, calls, strict=True):
            if not math.isfinite(c):  # no run succeeded: every call was wasted
                amplification.annotate("no turn\ncompleted", (x, 1.0), ha="center", va="bottom", fontsize=8)
    for i, service in enumerate(services):
        target = targets.get(str(service), {})
        if "goodput_ratio_min" in target:
            goodput.hlines(
                target["goodput_ratio_min"], i - 0.45, i + 0.45, colors="red", linestyles="--", linewidth=1.2,
                label="target for ours, exact contracts (per service time)",
            )  # fmt: skip
    if any("amplification_max" in t for t in targets.values()):
        _target(amplification, 1.0, "target: 1.00 backend call per turn")
    labels = [f"{s} ms service" for s in services]
    goodput.set(
        ylabel="goodput / backend limit (ratio)",
        ylim=(0, 1.05),
        title=f"Turns of successful runs (median of {repeats} repeats; bars: min to max)",
    )
    amplification.set(
        yscale="log",
        ylabel="backend calls per completed turn (worst repeat, log)",
        title="Load amplification (1 = no wasted calls)",
    )
    for ax in (goodput, amplification):
        ax.set_xticks(range(len(services)), labels)
        ax.set_xlabel("backend service time per call (ms)")
    _legend(fig, [goodput, amplification])
    return fig


def _ledger_figure(ledger: dict[str, Any]) -> Figure:
    rows = ledger["results"]
    targets = ledger.get("targets", {})
    open_rows = [r for r in ledger.get("open_loop", []) if not r["gc_frozen"]]
    fig, (closed, latency) = _figure("Ledger: acquire + release pairs", 2)
    labels = [f"{readable(r['ledger'])}\n{r['tasks']} task{'s' if r['tasks'] != 1 else ''}" for r in rows]
    colors = ["tab:blue" if r["ledger"] == "memory" else "tab:orange" for r in rows]
    closed.bar(labels, [r["ops_s"] for r in rows], color=colors)
    for key, name in (("memory_ops_s_min", "InMemoryLedger"), ("redis_ops_s_min", "RedisLedger")):
        if key in targets:
            closed.axhline(
                targets[key],
                color="red" if name == "InMemoryLedger" else "darkred",
                linestyle="--" if name == "InMemoryLedger" else ":",
                linewidth=1.2,
                label=f"target: {name} at least {targets[key]:,.0f} pairs/s",
            )
    closed.set(
        yscale="log",
        xlabel="ledger and concurrent tasks",
        ylabel="pairs / s (closed loop, log)",
        title="Throughput, closed loop",
    )
    closed.tick_params(axis="x", labelsize=8)
    if open_rows:
        offered = [r["offered_s"] for r in open_rows]
        latency.plot(offered, [r["p99_ms"] for r in open_rows], marker="o", label="RedisLedger p99 latency")
        latency.plot(offered, [r["p50_ms"] for r in open_rows], marker="s", label="RedisLedger p50 latency")
    if "redis_p99_ms_max" in targets:
        _target(
            latency, targets["redis_p99_ms_max"], f"target: RedisLedger p99 at most {targets['redis_p99_ms_max']} ms"
        )
    latency.set(
        yscale="log",
        xlabel="offered load, pairs / s (open loop)",
        ylabel="latency per pair, ms (log)",
        title="RedisLedger latency under a fixed offered rate",
    )
    _legend(fig, [closed, latency])
    return fig


def figures(report: dict[str, Any]) -> dict[str, Figure]:
    """One figure per scenario that ran and has a plot, by scenario name."""
    builders = {"overhead": _overhead_figure, "cascade": _cascade_figure, "ledger": _ledger_figure}
    return {name: build(report[name]) for name, build in builders.items() if name in report}


def plot(report: dict[str, Any], out: Path) -> list[Path]:
    """PNGs, one per scenario that ran, readable on their own and at the docs' width."""
    paths: list[Path] = []
    for name, fig in figures(report).items():
        path = out / f"{name}.png"
        fig.savefig(path, dpi=DPI)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    """Redraw the PNGs from a ``results.json`` without rerunning the benchmarks."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks._report", description=main.__doc__)
    parser.add_argument("results", type=Path, help="a results.json written by python -m benchmarks")
    parser.add_argument("--out", type=Path, default=None, help="where the PNGs go (default: next to results.json)")
    args = parser.parse_args(argv)
    out = args.out or args.results.parent
    out.mkdir(parents=True, exist_ok=True)
    for path in plot(json.loads(args.results.read_text()), out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
