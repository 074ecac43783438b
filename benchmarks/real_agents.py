"""Scenario 5, real agents: runs of AssistantAgents, whose state grows with the conversation.

Three ``AssistantAgent`` members on ``ReplayChatCompletionClient`` (400-character replies), runs of 100 and
1,000 turns. Contestants: RoundRobinGroupChat, CapacityAwareGroupChat without contracts, and with a contract
on every member (ample: ``max_concurrent=2``, ``rpm=1e9``). Each length runs in several fresh processes (a
process's memory layout moves every contestant's speed by several per cent); in each, the contestants run
interleaved in a shuffled order each repeat and each repeat's time is divided by RoundRobinGroupChat's time of
the same repeat. Reported: the median of all those ratios, each process's median and a 95 % interval of the
median (cluster bootstrap over the processes). Any per-turn work that grows with a member's context (such as
saving its state before every turn) shows here as a ratio that grows with the run's length.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import random
import resource
import sys
import time
from typing import Any

from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.base import Team
from autogen_agentchat.teams import RoundRobinGroupChat
from autogen_ext.models.replay import ReplayChatCompletionClient

from autogen_capacity import AgentCapacity, CapacityAwareGroupChat, InMemoryLedger

from ._stats import median, ratio_summary
from ._workers import in_fresh_process

__all__ = ["CONTESTANTS", "LENGTHS", "TARGET_RATIO", "measure", "run"]

TARGET_RATIO = 1.05
"""Ours may take at most this much time per run relative to RoundRobinGroupChat, at every run length."""

CONTESTANTS = ("round_robin", "ours_no_contracts", "ours_contracts")
MEMBERS = 3
REPLY = ("lorem ipsum dolor sit amet " * 16)[:400]
"""A 400-character reply."""

LENGTHS = {100: (10, 9), 1000: (8, 2)}
"""Turns per run: (fresh processes, interleaved repeats in each). A 100-turn run takes 0.07 s, so its single
ratios scatter widely and it gets more repeats."""

_CONTRACT = AgentCapacity(max_concurrent=2, rpm=1e9)


def _team(kind: str, turns: int) -> tuple[Team, list[ReplayChatCompletionClient]]:
    """One contestant over fresh members, and the members' model clients (rewound before every run)."""
    clients = [ReplayChatCompletionClient([REPLY] * turns) for _ in range(MEMBERS)]
    agents = [AssistantAgent(f"agent_{i}", model_client=client) for i, client in enumerate(clients)]
    if kind == "round_robin":
        return RoundRobinGroupChat(agents, max_turns=turns), clients
    capacities = {agent.name: _CONTRACT for agent in agents} if kind == "ours_contracts" else None
    return CapacityAwareGroupChat(agents, capacities=capacities, ledger=InMemoryLedger(), max_turns=turns), clients


async def time_run(team: Team, clients: list[ReplayChatCompletionClient], turns: int) -> tuple[float, float, int]:
    """Wall-clock and CPU seconds, and minor page faults, of one run of ``turns`` turns from a reset team (garbage
    collection paused, as timeit does). The CPU time leaves out what other processes on a shared machine take; the
    page faults count the memory the process mapped afresh (Python maps and unmaps its 1 MiB arenas as its
    objects come and go)."""
    await team.reset()
    for client in clients:
        client.reset()
        client.create_calls.clear()
    gc.collect()
    gc.disable()
    try:
        faults_start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start, cpu_start = time.perf_counter(), time.process_time()
        result = await team.run(task="go")
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_start
    finally:
        gc.enable()
    if len(result.messages) != turns + 1:
        raise RuntimeError(f"expected {turns} turns, got {len(result.messages) - 1}: {result.stop_reason}")
    return elapsed, cpu, faults


async def measure(turns: int, repeats: int, seed: int) -> dict[str, dict[str, list[float]]]:
    """One process's share: a warm-up run of each contestant, then ``repeats`` repeats in a shuffled order each;
    seconds per run, and wall-clock and CPU ratios to RoundRobinGroupChat of the same repeat, per contestant."""
    teams = {kind: _team(kind, turns) for kind in CONTESTANTS}
    for team, clients in teams.values():  # warm-up: registers the agents and instantiates them in the runtime
        await time_run(team, clients, turns)
    rng = random.Random(seed)
    per_run: dict[str, list[float]] = {kind: [] for kind in CONTESTANTS}
    ratios: dict[str, list[float]] = {kind: [] for kind in CONTESTANTS}
    cpu_ratios: dict[str, list[float]] = {kind: [] for kind in CONTESTANTS}
    faults: dict[str, list[int]] = {kind: [] for kind in CONTESTANTS}
    for _ in range(repeats):
        order = list(CONTESTANTS)
        rng.shuffle(order)
        this = {kind: await time_run(*teams[kind], turns) for kind in order}
        for kind in CONTESTANTS:
            per_run[kind].append(this[kind][0])
            ratios[kind].append(this[kind][0] / this["round_robin"][0])
            cpu_ratios[kind].append(this[kind][1] / this["round_robin"][1])
            faults[kind].append(this[kind][2])
    return {"per_run": per_run, "ratios": ratios, "cpu_ratios": cpu_ratios, "page_faults": faults}


async def run(quick: bool) -> dict[str, Any]:
    """Median seconds per run and median ratio to RoundRobinGroupChat, per run length and contestant."""
    lengths = LENGTHS if not quick else {20: (2, 1), 60: (1, 1)}
    results: list[dict[str, Any]] = []
    for turns, (processes, repeats) in lengths.items():
        shares = [await in_fresh_process(__name__, turns, repeats, seed) for seed in range(processes)]
        load = [round(x, 2) for x in os.getloadavg()]
        for kind in CONTESTANTS:
            summary = ratio_summary([share["ratios"][kind] for share in shares])
            ratio = summary["ratio_to_round_robin"]
            per_run = median([t for share in shares for t in share["per_run"][kind]])
            results.append(
                {
                    "turns": turns,
                    "contestant": kind,
                    "processes": processes,
                    "repeats": processes * repeats,
                    "s_per_run": per_run,
                    "us_per_turn": per_run / turns * 1e6,
                    **summary,
                    "cpu_ratio_to_round_robin": median([r for share in shares for r in share["cpu_ratios"][kind]]),
                    "page_faults_per_run": median([n for share in shares for n in share["page_faults"][kind]]),
                    "meets_target": ratio <= TARGET_RATIO if kind.startswith("ours") else None,
                    "load_average": load,
                }
            )
    return {"target_ratio": TARGET_RATIO, "members": MEMBERS, "reply_chars": len(REPLY), "results": results}


if __name__ == "__main__":
    turns, repeats, seed = map(int, sys.argv[1:4])
    print(json.dumps(asyncio.run(measure(turns, repeats, seed))))
