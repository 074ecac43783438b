"""Scenario 1, overhead: time per turn of CapacityAwareGroupChat against AutoGen's own teams.

Trivial members (they answer at once), contracts with ample headroom on every member of ours. Each size runs in
several fresh processes (a process's memory layout moves every contestant's speed by several per cent); in each,
the four contestants run interleaved in a shuffled order each repeat, and each repeat's time is divided by
RoundRobinGroupChat's time of the same repeat. Reported: the median of all those ratios, each process's median
and a 95 % interval of the median (cluster bootstrap over the processes).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import random
import sys
import time
from typing import Any

from autogen_agentchat.base import Team

from autogen_capacity import AgentCapacity, InMemoryLedger

from ._agents import TrivialAgent
from ._stats import median, ratio_summary
from ._teams import CONTESTANTS, build_team
from ._workers import in_fresh_process

__all__ = ["PROCESSES", "REPEATS", "TARGET_RATIO", "measure", "run"]

TARGET_RATIO = 1.05
"""Ours may cost at most this much per turn relative to RoundRobinGroupChat, at every size (issue 14)."""
PROCESSES = 10
"""Fresh processes per size."""
REPEATS = 5
"""Interleaved repeats in each process (a run takes 0.1 to 0.5 s)."""

_AMPLE = AgentCapacity(max_concurrent=1_000_000)


async def time_run(team: Team, turns: int) -> float:
    """Seconds per turn of one run of ``turns`` turns (after a reset; garbage collection paused, as timeit does)."""
    await team.reset()
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        result = await team.run(task="go")
        elapsed = time.perf_counter() - start
    finally:
        gc.enable()
    if len(result.messages) != turns + 1:
        raise RuntimeError(f"expected {turns} turns, got {len(result.messages) - 1}: {result.stop_reason}")
    return elapsed / turns


def _teams(size: int, turns: int) -> dict[str, Team]:
    teams: dict[str, Team] = {}
    for kind in CONTESTANTS:
        agents = [TrivialAgent(f"agent_{i}") for i in range(size)]
        capacities = {agent.name: _AMPLE for agent in agents}
        teams[kind] = build_team(kind, agents, max_turns=turns, capacities=capacities, ledger=InMemoryLedger())
    return teams


async def measure(size: int, turns: int, repeats: int, seed: int) -> dict[str, dict[str, list[float]]]:
    """One process's share: a warm-up run of each contestant, then ``repeats`` repeats in a shuffled order each;
    seconds per turn and ratios to RoundRobinGroupChat of the same repeat, per contestant."""
    teams = _teams(size, turns)
    for team in teams.values():  # warm-up: registers the agents and instantiates them in the runtime
        await time_run(team, turns)
    rng = random.Random(seed)
    per_turn: dict[str, list[float]] = {kind: [] for kind in CONTESTANTS}
    ratios: dict[str, list[float]] = {kind: [] for kind in CONTESTANTS}
    for _ in range(repeats):
        order = list(CONTESTANTS)
        rng.shuffle(order)
        this = {kind: await time_run(teams[kind], turns) for kind in order}
        for kind in CONTESTANTS:
            per_turn[kind].append(this[kind])
            ratios[kind].append(this[kind] / this["round_robin"])
    return {"per_turn": per_turn, "ratios": ratios}


async def run(quick: bool) -> dict[str, Any]:
    """Median seconds per turn and median ratio to RoundRobinGroupChat, per size and contestant."""
    sizes = {4: 300, 64: 60, 256: 25} if not quick else {4: 40, 64: 10}
    processes, repeats = (PROCESSES, REPEATS) if not quick else (2, 1)
    results: list[dict[str, Any]] = []
    for size, turns in sizes.items():
        shares = [await in_fresh_process(__name__, size, turns, repeats, seed) for seed in range(processes)]
        load = [round(x, 2) for x in os.getloadavg()]
        for kind in CONTESTANTS:
            summary = ratio_summary([share["ratios"][kind] for share in shares])
            ratio = summary["ratio_to_round_robin"]
            results.append(
                {
                    "members": size,
                    "contestant": kind,
                    "turns_per_run": turns,
                    "processes": processes,
                    "repeats": processes * repeats,
                    "us_per_turn": median([t for share in shares for t in share["per_turn"][kind]]) * 1e6,
                    **summary,
                    "meets_target": ratio <= TARGET_RATIO if kind.startswith("ours") else None,
                    "load_average": load,
                }
            )
    return {"target_ratio": TARGET_RATIO, "results": results}


if __name__ == "__main__":
    size, turns, repeats, seed = map(int, sys.argv[1:5])
    print(json.dumps(asyncio.run(measure(size, turns, repeats, seed))))
