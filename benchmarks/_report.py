"""The report: rich tables on the terminal, JSON, and small PNG plots (matplotlib, Agg backend)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from rich.console import Console
from rich.table import Table

__all__ = ["plot", "print_tables", "write_json"]


def _f(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:,.{digits}f}"
    return str(value)


def print_tables(report: dict[str, Any], console: Console | None = None) -> None:
    """One table per scenario that ran."""
    console = console or Console()
    if "overhead" in report:
        table = Table(title="1. Overhead: time per turn (median of interleaved repeats)")
        for column in ("members", "contestant", "us/turn", "ratio to RR (median)", "min", "max", "<= 1.10"):
            table.add_column(column, justify="right")
        for r in report["overhead"]["results"]:
            table.add_row(
                str(r["members"]), r["contestant"], _f(r["us_per_turn"], 0), _f(r["ratio_to_round_robin"], 3),
                _f(r["ratio_min"], 3), _f(r["ratio_max"], 3), _f(r["meets_target"]),
            )  # fmt: skip
        console.print(table)
    if "cascade" in report:
        cascade = report["cascade"]
        table = Table(
            title="2. Cascade: K concurrent runs, 8 true slots, 20 ms service (limit 400 turns/s); "
            f"median of {cascade.get('repeats', 1)} interleaved repeats, counts from the worst"
        )
        columns = ("K", "contestant", "turns/s", "of limit", "of measured", "amplif.", "429s", "failed runs")
        for column in (*columns, "p50 s", "p99 s", "peak/limit", "Jain", "CPU"):
            table.add_column(column, justify="right")
        for r in cascade["results"]:
            table.add_row(
                str(r["k"]), r["contestant"], _f(r["goodput_turns_s"], 1), _f(r["goodput_ratio"], 3),
                _f(r["goodput_ratio_measured_service"], 3), _f(r["amplification"], 3),
                str(r.get("rejected_429_max", r["rejected_429"])), str(r.get("runs_failed_max", r["runs_failed"])),
                _f(r["run_latency_p50_s"]), _f(r["run_latency_p99_s"]), _f(r["peak_over_limit"], 1),
                _f(r["jain"], 3), _f(r["cpu_busy"]),
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
            "(median of interleaved repeats)"
        )
        columns = ("turns", "contestant", "s/run", "us/turn", "ratio to RR (median)", "min", "max", "CPU ratio")
        for column in (*columns, "<= 1.05"):
            table.add_column(column, justify="right")
        for r in real["results"]:
            table.add_row(
                str(r["turns"]), r["contestant"], _f(r["s_per_run"], 3), _f(r["us_per_turn"], 0),
                _f(r["ratio_to_round_robin"], 3), _f(r["ratio_min"], 3), _f(r["ratio_max"], 3),
                _f(r["cpu_ratio_to_round_robin"], 3), _f(r["meets_target"]),
            )  # fmt: skip
        console.print(table)


def write_json(report: dict[str, Any], out: Path) -> Path:
    """``results.json`` in ``out``."""
    path = out / "results.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return path


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot(report: dict[str, Any], out: Path) -> list[Path]:
    """Small PNGs, one per scenario that ran."""
    paths: list[Path] = []
    if "overhead" in report:
        rows = report["overhead"]["results"]
        fig, ax = plt.subplots(figsize=(6, 3.2))
        for kind in dict.fromkeys(r["contestant"] for r in rows):
            mine = [r for r in rows if r["contestant"] == kind]
            ax.plot([r["members"] for r in mine], [r["ratio_to_round_robin"] for r in mine], marker="o", label=kind)
        ax.axhline(report["overhead"]["target_ratio"], color="red", linestyle="--", linewidth=1, label="target")
        ax.set(xscale="log", xlabel="members", ylabel="time per turn / RoundRobinGroupChat")
        ax.legend(fontsize=7)
        paths.append(_save(fig, out / "overhead.png"))
    if "cascade" in report:
        rows = report["cascade"]["results"]
        fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
        for kind in dict.fromkeys(r["contestant"] for r in rows):
            mine = [r for r in rows if r["contestant"] == kind]
            ks = [r["k"] for r in mine]
            axes[0].plot(ks, [r["goodput_ratio"] for r in mine], marker="o", label=kind)
            axes[1].plot(ks, [r["amplification"] for r in mine], marker="o", label=kind)
        axes[0].axhline(0.9, color="red", linestyle="--", linewidth=1)
        axes[0].set(xscale="log", xlabel="concurrent runs K", ylabel="goodput / limit", ylim=(0, 1.05))
        axes[1].set(xscale="log", yscale="log", xlabel="concurrent runs K", ylabel="backend attempts per turn")
        axes[0].legend(fontsize=7)
        paths.append(_save(fig, out / "cascade.png"))
    if "ledger" in report:
        rows = report["ledger"]["results"]
        open_rows = [r for r in report["ledger"].get("open_loop", []) if not r["gc_frozen"]]
        fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
        labels = [f"{r['ledger']}\n{r['tasks']} task(s)" for r in rows]
        axes[0].bar(labels, [r["ops_s"] for r in rows], color="tab:blue")
        axes[0].set(yscale="log", ylabel="pairs / s, closed loop")
        axes[1].plot([r["offered_s"] for r in open_rows], [r["p99_ms"] for r in open_rows], marker="o", label="p99")
        axes[1].plot([r["offered_s"] for r in open_rows], [r["p50_ms"] for r in open_rows], marker="o", label="p50")
        axes[1].axhline(report["ledger"]["targets"]["redis_p99_ms_max"], color="red", linestyle="--", linewidth=1)
        axes[1].set(xlabel="RedisLedger, offered pairs / s (open loop)", ylabel="latency ms", yscale="log")
        axes[1].legend(fontsize=7)
        paths.append(_save(fig, out / "ledger.png"))
    return paths
