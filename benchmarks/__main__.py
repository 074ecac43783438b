"""``python -m benchmarks [--quick] [--out DIR] [--only NAME ...]``: run the scenarios, print, write JSON and PNGs."""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from . import adaptive, cascade, distributed, instructions, ledger, overhead, priorities, real_agents, retention, scale
from ._report import plot, print_tables, write_json
from ._stats import machine

SCENARIOS = {
    "overhead": overhead.run,
    "cascade": cascade.run,
    "scale": scale.run,
    "ledger": ledger.run,
    "real_agents": real_agents.run,
    "distributed": distributed.run,
    "priorities": priorities.run,
    "adaptive": adaptive.run,
    "instructions": instructions.run,
    "retention": retention.run,
}
OPT_IN = frozenset({"instructions", "retention"})
"""Scenarios that run only when named with ``--only`` (they take long)."""
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


async def _run(names: list[str], quick: bool, console: Console) -> dict[str, Any]:
    report: dict[str, Any] = {"machine": machine(), "quick": quick, "seconds": {}}
    for name in names:
        console.print(f"[bold]running {name}[/bold]{' (quick)' if quick else ''} ...")
        start = time.perf_counter()
        report[name] = await SCENARIOS[name](quick)
        report["seconds"][name] = round(time.perf_counter() - start, 1)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run: small sizes, few repeats")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where results.json and the PNGs go")
    default = [name for name in SCENARIOS if name not in OPT_IN]
    parser.add_argument("--only", nargs="+", choices=list(SCENARIOS), default=default)
    args = parser.parse_args(argv)
    console = Console(width=150)
    report = asyncio.run(_run(args.only, args.quick, console))
    args.out.mkdir(parents=True, exist_ok=True)
    print_tables(report, console)
    console.print(f"machine: {report['machine']}")
    console.print(f"wrote {write_json(report, args.out)}")
    for path in plot(report, args.out):
        console.print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
