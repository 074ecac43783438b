"""Scenario 3, scale: selection cost and memory with 1,000 members and 10,000 keys in the ledger.

Per-turn time of CapacityAwareGroupChat (headroom routing, a contract on every member, a ledger holding
10,000 keys) and of RoundRobinGroupChat at 100 and 1,000 members, interleaved; the growth from 100 to
1,000 members of ours must not exceed AutoGen's own. The selection work itself (one ledger status per
candidate, the headroom ranking, one lease) is also timed alone, and tracemalloc measures the ledger's
memory per key and the memory a team of 1,000 members takes to build and run.
"""

from __future__ import annotations

import asyncio
import gc
import random
import time
import tracemalloc
from typing import Any

from autogen_agentchat.base import Team

from autogen_capacity import AgentCapacity, InMemoryLedger
from autogen_capacity.routing import rank_by_headroom, rotation

from ._agents import TrivialAgent
from ._stats import median
from ._teams import build_team
from .overhead import time_run

__all__ = ["GROWTH_TOLERANCE", "run"]

KEYS = 10_000
GROWTH_TOLERANCE = 1.10
"""Ours' per-turn growth from 100 to 1,000 members may exceed RoundRobinGroupChat's by this factor (noise)."""
_CAP = AgentCapacity(max_concurrent=1_000)
_KINDS = ("round_robin", "ours_headroom")


async def _ledger_with_keys(members: int, keys: int) -> InMemoryLedger:
    """A ledger that has seen ``keys`` keys: the members' and others' (other teams, other tools)."""
    ledger = InMemoryLedger()
    for i in range(keys - members):
        lease = await ledger.try_acquire(f"other_{i}", _CAP)
        assert lease is not None
        await lease.release()
    return ledger


def _team(kind: str, members: int, turns: int, ledger: InMemoryLedger) -> Team:
    agents = [TrivialAgent(f"agent_{i}") for i in range(members)]
    return build_team(kind, agents, max_turns=turns, capacities={a.name: _CAP for a in agents}, ledger=ledger)


async def _selection_us(ledger: InMemoryLedger, members: int, repeats: int) -> float:
    """Median microseconds of the manager's selection work for one turn, done alone."""
    names = [f"agent_{i}" for i in range(members)]
    times: list[float] = []
    for turn in range(repeats):
        start = time.perf_counter()
        statuses = {name: await ledger.status(name, _CAP) for name in names}
        ordered = rank_by_headroom(rotation(names, turn), {n: s.headroom for n, s in statuses.items()})
        lease = await ledger.try_acquire(ordered[0], _CAP)
        assert lease is not None
        await lease.release()
        times.append(time.perf_counter() - start)
    return median(times) * 1e6


async def _memory(kind: str, members: int, turns: int, ledger: InMemoryLedger) -> int:
    """Peak bytes traced while building a team of ``members`` and running it once."""
    gc.collect()
    tracemalloc.start()
    try:
        team = _team(kind, members, turns, ledger)
        await team.run(task="go")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak


async def _ledger_bytes_per_key(keys: int) -> float:
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        ledger = await _ledger_with_keys(0, keys)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    await ledger.aclose()
    return (after - before) / keys


async def run(quick: bool) -> dict[str, Any]:
    """Per-turn time at 100 and 1,000 members, selection work, and memory."""
    sizes = {100: 20, 1000: 4} if not quick else {10: 4, 100: 2}
    repeats = 5 if not quick else 1
    keys = KEYS if not quick else 500
    rng = random.Random(3)
    rows: list[dict[str, Any]] = []
    per_turn: dict[tuple[str, int], float] = {}
    for members, turns in sizes.items():
        ledger = await _ledger_with_keys(members, keys)
        teams = {kind: _team(kind, members, turns, ledger) for kind in _KINDS}
        for team in teams.values():
            await time_run(team, turns)  # warm-up
        samples: dict[str, list[float]] = {kind: [] for kind in _KINDS}
        for _ in range(repeats):
            order = list(_KINDS)
            rng.shuffle(order)
            for kind in order:
                samples[kind].append(await time_run(teams[kind], turns))
        selection = await _selection_us(ledger, members, 50 if not quick else 5)
        for kind in _KINDS:
            per_turn[kind, members] = median(samples[kind])
            rows.append(
                {
                    "members": members,
                    "contestant": kind,
                    "ledger_keys": len(await ledger.snapshot()),
                    "us_per_turn": per_turn[kind, members] * 1e6,
                    "selection_us": selection if kind != "round_robin" else None,
                    "peak_bytes_build_and_run": await _memory(kind, members, turns, ledger),
                }
            )
        await ledger.aclose()
        await asyncio.sleep(0)
    small, large = sizes
    growth = {kind: per_turn[kind, large] / per_turn[kind, small] for kind in _KINDS}
    return {
        "keys": keys,
        "sizes": list(sizes),
        "results": rows,
        "growth_100_to_1000": growth,
        "growth_ratio_ours_to_autogen": growth["ours_headroom"] / growth["round_robin"],
        "ledger_bytes_per_key": await _ledger_bytes_per_key(keys),
        "meets_target": growth["ours_headroom"] <= growth["round_robin"] * GROWTH_TOLERANCE,
    }
