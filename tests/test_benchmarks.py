"""The benchmarks still run: ``python -m benchmarks --quick`` (a smoke run; nothing here is timed)."""

from __future__ import annotations

import asyncio
import gc
import json
import mmap
import shutil
import subprocess
import sys
import weakref
from collections.abc import Sequence
from pathlib import Path

import pytest
from autogen_agentchat.base import Response
from autogen_agentchat.messages import BaseChatMessage
from autogen_agentchat.teams import RoundRobinGroupChat
from autogen_core import CancellationToken
from benchmarks import cascade, instructions, overhead, real_agents, retention
from benchmarks._agents import TrivialAgent
from benchmarks._report import print_tables
from benchmarks._stats import median_ci, ratio_summary
from benchmarks._workers import in_fresh_process

ROOT = Path(__file__).resolve().parent.parent


def test_quick_run_writes_results(tmp_path: Path) -> None:
    """A quick run exits 0 and writes results.json with every scenario and the plots."""
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,  # a hang guard: the quick run takes about a minute
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    report = json.loads((tmp_path / "results.json").read_text())
    assert {"machine", "quick", "overhead", "cascade", "scale", "ledger", "real_agents"} <= report.keys()
    assert report["quick"] is True
    assert {"platform", "cpu_count", "python", "packages"} <= report["machine"].keys()
    assert {"members", "contestant", "us_per_turn", "ratio_to_round_robin"} <= report["overhead"]["results"][0].keys()
    cascade_keys = {"goodput_ratio", "amplification", "rejected_429", "runs_failed", "run_latency_p99_s", "jain"}
    assert cascade_keys <= report["cascade"]["results"][0].keys()
    assert {row["service_ms"] for row in report["cascade"]["results"]} == {20}  # the 200 ms cell: full runs only
    assert report["cascade"]["k"] == 128
    assert report["overhead"]["target_ratio"] == 1.05
    assert {"growth_100_to_1000", "ledger_bytes_per_key"} <= report["scale"].keys()
    assert {"ledger", "tasks", "ops_s", "p99_ms"} <= report["ledger"]["results"][0].keys()
    real_keys = {"turns", "contestant", "s_per_run", "ratio_to_round_robin", "page_faults_per_run", "meets_target"}
    assert real_keys <= report["real_agents"]["results"][0].keys()
    for row in (*report["overhead"]["results"], *report["real_agents"]["results"]):  # repeats in fresh processes
        assert len(row["process_medians"]) == row["processes"]
        low, high = row["ratio_ci95"]
        assert low <= row["ratio_to_round_robin"] <= high
    if report["ledger"]["open_loop"]:  # with redis-server installed
        assert {"offered_s", "gc_frozen", "ops_s", "p99_ms"} <= report["ledger"]["open_loop"][0].keys()
    priorities = report["priorities"]
    assert {"critical_p99_ratio", "critical_completed", "sheddable_ended_exhausted"} <= priorities["mixed"].keys()
    assert {"fail_fast_latency_max_s", "waited_out_completed"} <= priorities["fail_fast"].keys()
    assert {"default_waited_s", "bound_s"} <= priorities["starvation"].keys()
    assert all(
        isinstance(met, bool)
        for part in ("mixed", "fail_fast", "starvation")
        for met in priorities[part]["targets"].values()
    )
    adaptive = report["adaptive"]["results"]
    assert [row["declared"] for row in adaptive] == [8, 3, 8]
    assert {"throttled_per_turn", "calls_per_turn", "goodput_vs_exact", "rise_to_5_s"} <= adaptive[0].keys()
    for name in ("overhead.png", "cascade.png", "ledger.png"):
        assert (tmp_path / name).stat().st_size > 0


async def test_instructions_counts_a_real_process_under_callgrind() -> None:
    """The opt-in instructions scenario's count: callgrind's total for a real process, more for more work, and
    the child a count runs (one contestant's warm-up and runs) exits 0. (Async: ``asyncio.run`` in a test would drop
    pytest-asyncio's current loop unclosed.)"""
    if shutil.which("valgrind") is None:
        pytest.skip("valgrind is not installed")
    idle = await instructions.collected([sys.executable, "-S", "-c", "pass"])
    busy = await instructions.collected([sys.executable, "-S", "-c", "sum(range(3_000_000))"])
    assert 0 < idle < busy
    with pytest.raises(RuntimeError, match="under callgrind failed"):
        await instructions.collected([sys.executable, "-S", "-c", "raise SystemExit(3)"])
    child = instructions.child_command("real_agents", "ours_contracts", 3, 5, 1)
    completed = await asyncio.to_thread(
        subprocess.run, child, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert (await instructions.run(quick=True))["note"] == "--quick: not run"


async def test_weak_links_still_cancel_and_keep_nothing_for_the_token() -> None:
    """The retention scenario's patch: under it a token cancels what it linked while that lives, keeps nothing
    alive itself, and cancels at once on a cancelled token; after the block, ``link_future`` keeps again."""
    loop = asyncio.get_running_loop()
    stock = CancellationToken.link_future
    with retention.weak_links():
        token = CancellationToken()
        held = token.link_future(loop.create_future())
        dropped = token.link_future(loop.create_future())
        gone = weakref.ref(dropped)
        del dropped
        assert gone() is None
        token.cancel()
        assert held.cancelled()
        assert token.link_future(loop.create_future()).cancelled()
    assert CancellationToken.link_future is stock
    keeper = CancellationToken()
    kept = keeper.link_future(loop.create_future())
    still = weakref.ref(kept)
    del kept
    keeper.cancel()
    alive = still()
    assert alive is not None
    assert alive.cancelled()


async def test_the_retention_scenario_runs_both_kinds_of_process(capsys: pytest.CaptureFixture[str]) -> None:
    """A quick run of the opt-in retention scenario: every contestant in stock and weak-link processes, ratios to
    RoundRobinGroupChat of 1.0 for RoundRobinGroupChat itself, and its table."""
    report = await retention.run(quick=True)
    rows = {(row["mode"], row["contestant"]): row for row in report["results"]}
    assert rows.keys() == {(mode, kind) for mode in retention.MODES for kind in real_agents.CONTESTANTS}
    for row in rows.values():
        assert row["s_per_run"] > 0
        assert row["page_faults_per_run"] >= 0
        assert row["ratio_to_round_robin"] > 0
    assert all(rows[(mode, "round_robin")]["ratio_to_round_robin"] == 1.0 for mode in retention.MODES)
    print_tables({"retention": report})
    assert "10. Retention" in capsys.readouterr().out
    with pytest.raises(ValueError, match="mode must be one of"):
        await retention.measure(3, 1, 0, "strong")


class _MemoryToucher(TrivialAgent):
    """Maps 16 MiB afresh on every turn and writes to each of its pages before it answers."""

    async def on_messages(self, messages: Sequence[BaseChatMessage], cancellation_token: CancellationToken) -> Response:
        with mmap.mmap(-1, 16 << 20) as fresh:
            for page in range(0, len(fresh), mmap.PAGESIZE):
                fresh[page] = 1
        return await super().on_messages(messages, cancellation_token)


async def test_a_real_agents_run_counts_the_memory_it_maps_afresh() -> None:
    """A run's page faults (the real-agent table's column): a run whose member writes 16 MiB of fresh memory a
    turn counts a fault for each of those pages, more than a run of trivial members."""
    plain = RoundRobinGroupChat([TrivialAgent("a")], max_turns=3)
    touching = RoundRobinGroupChat([_MemoryToucher("a")], max_turns=3)
    await real_agents.time_run(plain, [], 3)  # warm-up: the runtime's first run maps memory of its own
    await real_agents.time_run(touching, [], 3)
    _, _, plain_faults = await real_agents.time_run(plain, [], 3)
    _, _, touching_faults = await real_agents.time_run(touching, [], 3)
    assert touching_faults - plain_faults >= 3 * (16 << 20) // mmap.PAGESIZE


class _Cycle:
    def __init__(self) -> None:
        self.me = self


async def test_a_cascade_cell_starts_from_a_collected_heap() -> None:
    """The garbage a cell before left (cycles only the collector frees) is collected before the next cell starts,
    with automatic collection off so that nothing else frees it."""
    left = _Cycle()
    gone = weakref.ref(left)
    del left
    gc.disable()
    try:
        with cascade._quiet_runtime():
            row = await cascade._measure("ours_exact", 2, 1, 0.001, 0.01, 0.05, 0.5)
        assert gone() is None
    finally:
        gc.enable()
    assert row["runs_failed"] == 0


def test_the_interval_of_the_median_counts_the_spread_between_processes() -> None:
    """The cluster bootstrap draws whole processes: processes that disagree widen the interval even when each one's
    repeats agree among themselves, and the same groups give the same interval."""
    steady = [[1.0, 1.01, 1.02]] * 4
    apart = [[0.9, 0.9, 0.9], [1.0, 1.0, 1.0], [1.1, 1.1, 1.1], [1.2, 1.2, 1.2]]
    steady_low, steady_high = median_ci(steady)
    apart_low, apart_high = median_ci(apart)
    assert 1.0 <= steady_low <= steady_high <= 1.02
    assert apart_high - apart_low > 0.1 > steady_high - steady_low
    assert median_ci(apart) == (apart_low, apart_high)
    summary = ratio_summary(apart)
    assert summary["process_medians"] == [0.9, 1.0, 1.1, 1.2]
    assert (summary["ratio_min"], summary["ratio_max"]) == (0.9, 1.2)
    assert summary["ratio_to_round_robin"] == pytest.approx(1.05)


async def test_a_worker_process_returns_its_share_and_a_failing_one_says_which() -> None:
    """The timed scenarios' workers run in fresh processes: their JSON comes back, and a worker that fails or
    prints no JSON raises with its command."""
    share = await in_fresh_process(overhead.__name__, 4, 3, 2, 0)
    assert {len(ratios) for ratios in share["ratios"].values()} == {2}
    assert share["ratios"]["round_robin"] == [1.0, 1.0]
    real = await in_fresh_process(real_agents.__name__, 3, 1, 0)
    assert set(real["cpu_ratios"]) == set(real_agents.CONTESTANTS)
    with pytest.raises(RuntimeError, match=r"benchmarks\.no_such_module failed"):
        await in_fresh_process("benchmarks.no_such_module")
    with pytest.raises(RuntimeError, match="printed no JSON"):
        await in_fresh_process("this")
