"""``autogen-capacity``: inspect and check teams' contracts before deployment, watch a ledger, or the offline demo.

Exit status: 0 when all is well, 1 when ``check`` finds errors (or warnings with ``--strict``) or ``status``
cannot read its ledger, 2 for a user mistake (a missing, unreadable, non-UTF-8 or non-JSON file, not a team
config, an invalid contract given to ``inspect``, an unknown ledger given to ``status``), 130 on Ctrl-C. A
mistake is one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Sequence

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from . import __version__
from .audit import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    STDIN,
    Audit,
    CheckResult,
    Finding,
    TeamReport,
    UnusableConfig,
    audit_config,
    audit_to_dict,
    check_report,
    load_config_file,
    parse_config,
)
from .contracts import AgentCapacity
from .demo import Backend, DemoResult, PhaseStats, Refresh, quiet_autogen, run_demo
from .exceptions import CapacityError
from .ledger import LedgerSnapshot
from .status import LedgerSpecError, Watched, open_ledger, render, snapshot_to_dict, watch

__all__ = ["main"]

PROG = "autogen-capacity"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        status: int = args.handler(args)
    except UnusableConfig as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        return 130
    return status


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Capacity contracts for AutoGen teams.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    inspect = commands.add_parser("inspect", help="print the contract tree of a team's JSON component config")
    inspect.add_argument("config", metavar="CONFIG.json", help="the file to inspect; - reads stdin")
    inspect.add_argument("--json", action="store_true", help="print the tree as JSON")
    inspect.set_defaults(handler=_inspect)

    check = commands.add_parser("check", help="validate and audit teams' JSON component configs")
    check.add_argument("configs", metavar="CONFIG.json", nargs="+", help="files to check; - reads stdin")
    check.add_argument("--strict", action="store_true", help="fail on warnings too")
    check.add_argument("--json", action="store_true", help="print one JSON report for all files (for CI)")
    check.set_defaults(handler=_check)

    demo = commands.add_parser("demo", help="an offline burst of team runs: capacity-aware vs round robin")
    demo.add_argument("--runs", type=_positive, default=24, help="team runs started at once (default 24)")
    demo.add_argument("--quick", action="store_true", help="a tiny, fast run (for tests)")
    demo.add_argument("--no-live", action="store_true", help="plain output (the default when not a terminal)")
    demo.set_defaults(handler=_demo)

    status = commands.add_parser("status", help="watch what a ledger holds, key by key (read-only)")
    status.add_argument(
        "ledger",
        metavar="LEDGER",
        help="memory, a redis:// URL, the name of an environment variable holding one, or a ledger config as JSON",
    )
    status.add_argument("--namespace", help="the Redis namespace (default: the config's, else autogen_capacity)")
    status.add_argument("--once", action="store_true", help="print the ledger once and exit")
    status.add_argument("--json", action="store_true", help="print JSON (one line a refresh without --once)")
    status.add_argument("--interval", type=_seconds, default=1.0, help="seconds between refreshes (default 1)")
    status.set_defaults(handler=_status)
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def _fail(message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return EXIT_USAGE


def _console() -> Console:
    if sys.stdout.isatty():
        return Console(highlight=False)
    # Piped or captured: one finding a line, and trees not cropped at 80 columns.
    return Console(highlight=False, soft_wrap=True, width=_PIPE_WIDTH)


_PIPE_WIDTH = 240


# ----------------------------------------------------------------- inspect / check


def _audit(path: str) -> Audit:
    try:
        data = parse_config(sys.stdin.buffer.read(), STDIN) if path == "-" else load_config_file(path)
        return audit_config(data)
    except UnusableConfig as e:
        source = STDIN if path == "-" else path
        message = str(e)
        raise UnusableConfig(message if message.startswith(source) else f"{source}: {message}") from None


def _inspect(args: argparse.Namespace) -> int:
    audit = _audit(args.config)
    source = STDIN if args.config == "-" else args.config
    if audit.errors:
        for finding in audit.errors:
            _fail(f"{source}: {finding}")
        return EXIT_USAGE
    if args.json:
        print(json.dumps(audit_to_dict(audit), indent=2))
        return EXIT_OK
    console = _console()
    console.print(_tree(audit.team))
    if audit.warnings:
        console.print()
        for finding in audit.warnings:
            console.print(_finding_line(finding))
    return EXIT_OK


def _check(args: argparse.Namespace) -> int:
    if args.configs.count("-") > 1:
        return _fail("stdin (-) can be checked once")
    results = [_check_one(path, args.strict) for path in args.configs]
    if args.json:
        print(json.dumps(check_report(results, strict=args.strict), indent=2))
    else:
        console = _console()
        for result in results:
            _print_check(console, result)
    for result in results:
        if result.error is not None:
            _fail(result.error)
    return max(result.status for result in results)


def _check_one(path: str, strict: bool) -> CheckResult:
    source = STDIN if path == "-" else path
    try:
        audit = _audit(path)
    except UnusableConfig as e:
        return CheckResult(source, None, str(e), strict)
    return CheckResult(source, audit, None, strict)


def _print_check(console: Console, result: CheckResult) -> None:
    if result.audit is None:
        return
    audit = result.audit
    for finding in audit.findings:
        console.print(_finding_line(finding))
    counts = f"{len(audit.errors)} error(s), {len(audit.warnings)} warning(s)"
    verdict = "OK" if result.status == EXIT_OK else "FAILED"
    console.print(f"{verdict}: {result.path}: {result.teams} team(s), {result.members} member(s); {counts}")


def _finding_line(finding: Finding) -> Text:
    style = "bold red" if finding.level == "error" else "yellow"
    return Text.assemble((f"{finding.level}: ", style), str(finding))


def _limit(value: int | float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _contract_text(contract: AgentCapacity | None) -> str:
    if contract is None:
        return "no contract (unbounded, never deferred)"
    schedule = ", ".join(f"{d:g}" for d in contract.backoff_schedule()) or "none"
    jitter = " full jitter" if contract.backoff_jitter else ""
    queue = f" queue {contract.max_queue}" if contract.max_queue is not None else ""
    return (
        f"slots {_limit(contract.max_concurrent)}  rpm {_limit(contract.rpm)}  tpm {_limit(contract.tpm)}{queue}  "
        f"backoff {contract.backoff_strategy} [{schedule}] s{jitter}  retries {contract.max_caller_retries}"
    )


def _derivation_text(team: TeamReport) -> str:
    if not team.capacity_aware:
        return "a plain AutoGen team enforces no contract (capacity-aware teams inside it enforce their own)"
    op = " + " if team.mode == "pool" else ", "
    parts = []
    for d in team.derivation:
        if d.combined is None and d.declared is None:
            continue
        values = op.join(f"{_backend_label(key, team.backends[key])}={_limit(v)}" for key, v in d.keys.items())
        combined = f"sum({values})" if team.mode == "pool" else f"min({values})"
        text = f"{d.field} {combined} = {_limit(d.combined)}"
        if d.declared is not None:
            text += f", capped by declared {_limit(d.declared)} -> {_limit(d.effective)}"
        parts.append(text)
    head = f"{team.mode} ({'every member speaks in turn' if team.mode == 'pipeline' else 'any member serves a turn'})"
    return f"{head}: " + ("; ".join(parts) if parts else "every member unbounded")


def _backend_label(key: str, names: Sequence[str]) -> str:
    return key if list(names) == [key] else f"{key}[{', '.join(names)}]"


def _tree(team: TeamReport, tree: Tree | None = None) -> Tree:
    kind = team.provider.rsplit(".", 1)[-1]
    label = f"[bold]team {escape(repr(team.name))}[/]  {escape(kind)}"
    if team.capacity_aware:
        label += f"  routing {escape(str(team.routing))}  key {escape(repr(team.key))}"
    if team.timeout_s is not None:
        label += f"  timeout {team.timeout_s:g}s"
    node = tree.add(label) if tree is not None else Tree(label)
    if team.capacity_aware:
        node.add(f"[cyan]declared[/]   {_contract_text(team.declared) if team.declared else 'none'}")
        node.add(f"[cyan]effective[/]  {_contract_text(team.effective) if team.effective else 'unbounded'}")
    node.add(f"[cyan]derived[/]    {escape(_derivation_text(team))}")
    for member in team.members:
        source = {"capacities": "", "nested team": " (the nested team's aggregate)", "none": ""}[member.source]
        text = (
            f"[bold]member {escape(repr(member.name))}[/]  key {escape(repr(member.key))}  "
            f"{_contract_text(member.contract)}{source}"
        )
        child = node.add(text)
        for inner in (member.team, *member.wrapped):
            if inner is not None:
                _tree(inner, child)
    return node


# ----------------------------------------------------------------- demo


def _demo(args: argparse.Namespace) -> int:
    runs = 6 if args.quick and args.runs == 24 else args.runs
    turns, scale = (3, 0.1) if args.quick else (8, 1.0)
    live = not args.no_live and sys.stdout.isatty()
    console = _console()
    console.print(
        f"[bold]{PROG} demo[/]: {runs} team runs at once, {turns} turns each, on three scripted backends: "
        "alpha serves 4 at once, beta 2, gamma 1; past its limit a backend answers 429, and beta also "
        "answers 429 about once in 25 requests."
    )
    with quiet_autogen():
        if live:
            with Live(console=console, refresh_per_second=10, transient=False) as view:

                def refresh(stats: PhaseStats, backends: Sequence[Backend], snapshot: LedgerSnapshot) -> None:
                    view.update(_live_table(stats, backends, snapshot))

                result = asyncio.run(run_demo(runs=runs, turns=turns, scale=scale, refresh=refresh))
        else:
            result = asyncio.run(run_demo(runs=runs, turns=turns, scale=scale, refresh=_progress(console)))
    _summary(console, result)
    return EXIT_OK


def _progress(console: Console) -> Refresh:
    """Plain output: one line when each team's burst is under way."""
    started: set[str] = set()

    def refresh(stats: PhaseStats, backends: Sequence[Backend], snapshot: LedgerSnapshot) -> None:
        if stats.team not in started:
            started.add(stats.team)
            console.print(f"{stats.team}: {stats.runs} runs under way")

    return refresh


def _live_table(stats: PhaseStats, backends: Sequence[Backend], snapshot: LedgerSnapshot) -> Group:
    table = Table(title=f"{stats.team}: {stats.finished}/{stats.runs} runs finished, {stats.wall_s:.1f}s")
    for column in ("member", "in flight / limit", "ledger in flight", "waiting", "cooling down", "429s"):
        table.add_column(column, justify="right" if column != "member" else "left")
    for b in backends:
        usage = snapshot.get(b.name)
        table.add_row(
            b.name,
            f"{b.in_flight} / {b.limit}",
            str(usage.in_flight) if usage else "-",
            str(usage.waiting) if usage else "-",
            f"{usage.cooling_down_for:.2f}s" if usage and usage.cooling_down_for else "-",
            str(b.rejected + b.throttled),
        )
    counters = Text(
        f"completed {stats.completed}  died on 429 {stats.overload_errors}  exhausted {stats.exhausted}  "
        f"deferrals {stats.deferrals}  waits {stats.waits}  429s rerouted {stats.rerouted}"
    )
    return Group(table, counters)


def _summary(console: Console, result: DemoResult) -> None:
    cap, rr = result.capacity, result.round_robin
    console.print(
        f"{cap.team}: {cap.completed}/{cap.runs} runs completed in {cap.wall_s:.1f}s; {cap.turns} turns, "
        f"{cap.deferrals} deferrals, {cap.waits} waits, {cap.rerouted} 429s rerouted, {cap.exhausted} exhausted; "
        "peak in flight " + ", ".join(f"{name} {cap.peaks[name]}/{cap.limits[name]}" for name in cap.limits)
    )
    console.print(
        f"{rr.team}: {rr.completed}/{rr.runs} runs completed in {rr.wall_s:.1f}s; "
        f"{rr.overload_errors} runs died on a 429"
    )
    table = Table(title="Same burst, side by side")
    table.add_column("")
    table.add_column(cap.team, justify="right")
    table.add_column(rr.team, justify="right")
    rows = [
        ("runs completed", f"{cap.completed}/{cap.runs}", f"{rr.completed}/{rr.runs}"),
        ("runs ended by an overload error", str(cap.overload_errors), str(rr.overload_errors)),
        ("runs ended 'Capacity exhausted'", str(cap.exhausted), "-"),
        ("429s answered by the backends", str(cap.backend_429s), str(rr.backend_429s)),
        ("turns served", str(cap.turns), str(rr.turns)),
        ("wall time", f"{cap.wall_s:.1f}s", f"{rr.wall_s:.1f}s"),
    ]
    for row in rows:
        table.add_row(*row)
    console.print(table)


# ----------------------------------------------------------------- status


def _status(args: argparse.Namespace) -> int:
    try:
        watched = open_ledger(args.ledger, namespace=args.namespace)
    except (LedgerSpecError, ImportError) as e:
        return _fail(str(e))
    console = _console()
    if args.json:

        def show_json(snapshot: LedgerSnapshot, error: str | None) -> None:
            data = snapshot_to_dict(watched, snapshot) | ({"error": error} if error else {})
            print(json.dumps(data, indent=2 if args.once else None), flush=True)

        return _watch(watched, show_json, args)
    if args.once:
        return _watch(watched, lambda snapshot, error: console.print(render(watched, snapshot, error=error)), args)
    with Live(console=console, refresh_per_second=4, transient=False) as view:
        return _watch(watched, lambda snapshot, error: view.update(render(watched, snapshot, error=error)), args)


def _watch(watched: Watched, show: Callable[[LedgerSnapshot, str | None], None], args: argparse.Namespace) -> int:
    try:
        asyncio.run(watch(watched, show, interval_s=args.interval, once=args.once))
    except CapacityError as e:
        print(f"{PROG}: cannot read {watched.name}: {e}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK
