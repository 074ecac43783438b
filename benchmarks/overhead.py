"""Scenario 1, overhead: time per turn of CapacityAwareGroupChat against AutoGen's own teams.

Trivial members (they answer at once), contracts with ample headroom on every member of ours. The four
contestants run interleaved in a shuffled order each repeat; each repeat's time is divided by
RoundRobinGroupChat's time of the same repeat, and the median of those ratios is reported.
"""

from __future__ import annotations

import gc
import os
import random
import time
from typing import Any

from autogen_agentchat.base import Team

from autogen_capacity import AgentCapacity, InMemoryLedger

from ._agents import TrivialAgent
from ._stats import median
from ._teams import CONTESTANTS, build_team

__all__ = ["TARGET_RATIO", "run"]

TARGET_RATIO = 1.05
"""Ours may cost at most this much per turn relative to RoundRobinGroupChat, at every size (issue 14)."""

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


async def run(quick: bool) -> dict[str, Any]:
    """Median seconds per turn and median ratio to RoundRobinGroupChat, per size and contestant."""
    sizes = {4: 300, 64: 60, 256: 25} if not quick else {4: 40, 64: 10}
    repeats = 21 if not quick else 2  # a run takes 0.1 to 0.3 s: many repeats are cheap and steady the median
    rng = random.Random(7)
    results: list[dict[str, Any]] = []
    for size, turns in sizes.items():
        teams = _teams(size, turns)
        for team in teams.values():  # warm-up: registers the agents and instantiates them in the runtime
            await time_run(team, turns)
        per_turn: dict[str, list[float]] = {kind: [] for kind in CONTESTANTS}
        ratios: dict[str, list[float]] = {kind: [] for kind in CONTESTANTS}
        for _ in range(repeats):
            order = list(CONTESTANTS)
            rng.shuffle(order)
            this = {kind: await time_run(teams[kind], turns) for kind in order}
            for kind in CONTESTANTS:
                per_turn[kind].append(this[kind])
                ratios[kind].append(this[kind] / this["round_robin"])
        load = [round(x, 2) for x in os.getloadavg()]
        for kind in CONTESTANTS:
            ratio = median(ratios[kind])
            results.append(
                {
                    "members": size,
                    "contestant": kind,
                    "turns_per_run": turns,
                    "repeats": repeats,
                    "us_per_turn": median(per_turn[kind]) * 1e6,
                    "ratio_to_round_robin": ratio,
                    "ratio_min": min(ratios[kind]),
                    "ratio_max": max(ratios[kind]),
                    "meets_target": ratio <= TARGET_RATIO if kind.startswith("ours") else None,
                    "load_average": load,
                }
            )
    return {"target_ratio": TARGET_RATIO, "results": results}
