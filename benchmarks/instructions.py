"""Scenario 9, instructions (opt-in: ``--only instructions``): CPU instructions per turn, ours over AutoGen's.

The wall-clock ratios of scenarios 1 and 5 scatter on a shared machine (single repeats from 0.6x to 1.8x, medians
that move by several points between runs). Instructions do not: each contestant runs in its own process under
``valgrind --tool=callgrind``, which counts every instruction the process executes, once with one measured run
and once with five after the same warm-up; the difference is the instructions of four runs (start-up, imports and
the warm-up cancel). Counted for the overhead scenario's trivial members (4 and 64) and the real-agent scenario's
``AssistantAgent``s (100 turns), against RoundRobinGroupChat in the same scenario run. Instructions are not
time (cache misses and branch mispredictions differ), but they show the work a turn costs, free of the load.

Takes about 15 minutes under valgrind (two processes at a time), hence opt-in; skipped with a note when valgrind
is not installed, and under ``--quick``.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from typing import Any

from . import overhead, real_agents
from ._workers import worker_command

__all__ = ["CELLS", "collected", "run"]

CELLS: tuple[tuple[str, int, int, tuple[str, ...]], ...] = (
    ("overhead", 4, 300, ("round_robin", "ours_round_robin", "ours_headroom")),
    ("overhead", 64, 60, ("round_robin", "ours_round_robin", "ours_headroom")),
    ("real_agents", real_agents.MEMBERS, 100, real_agents.CONTESTANTS),
)
"""(scenario, members, turns per run, contestants): the first contestant is the baseline."""
RUNS = (1, 5)
"""Measured runs in the two processes of a contestant: their difference is ``RUNS[1] - RUNS[0]`` runs."""
_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


async def collected(command: list[str]) -> int:
    """Instructions ``command`` executes under callgrind (its output is discarded).

    Raises:
        RuntimeError: the command failed, or callgrind reported no count.
    """
    process = await asyncio.create_subprocess_exec(
        "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *command,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await process.communicate()
    found = _COLLECTED.search(err.decode(errors="replace"))
    if process.returncode != 0 or found is None:
        raise RuntimeError(f"{' '.join(command)} under callgrind failed ({process.returncode}): {err[-500:]!r}")
    return int(found.group(1))


def child_command(scenario: str, kind: str, members: int, turns: int, runs: int) -> list[str]:
    """The process one count runs: ``python -m benchmarks.instructions`` with the cell's arguments."""
    return worker_command(__name__, scenario, kind, members, turns, runs)


async def _child(scenario: str, kind: str, members: int, turns: int, runs: int) -> None:
    """A warm-up run, then ``runs`` runs of one contestant (the scenarios' own team builders and timed runs)."""
    if scenario == "overhead":
        team = overhead._teams(members, turns)[kind]
        for _ in range(1 + runs):
            await overhead.time_run(team, turns)
    else:
        built = real_agents._team(kind, turns)
        for _ in range(1 + runs):
            await real_agents.time_run(*built, turns)


async def run(quick: bool) -> dict[str, Any]:
    """Instructions per turn of each contestant, and its ratio to the cell's baseline (RoundRobinGroupChat)."""
    if quick or shutil.which("valgrind") is None:
        note = "--quick: not run" if quick else "valgrind not found: scenario skipped"
        return {"runs": RUNS, "results": [], "note": note}
    two_at_a_time = asyncio.Semaphore(2)

    async def count(scenario: str, kind: str, members: int, turns: int, runs: int) -> int:
        async with two_at_a_time:
            return await collected(child_command(scenario, kind, members, turns, runs))

    results: list[dict[str, Any]] = []
    for scenario, members, turns, contestants in CELLS:
        counts = await asyncio.gather(
            *(count(scenario, kind, members, turns, runs) for kind in contestants for runs in RUNS)
        )
        per_turn = {
            kind: (counts[2 * i + 1] - counts[2 * i]) / ((RUNS[1] - RUNS[0]) * turns)
            for i, kind in enumerate(contestants)
        }
        baseline = per_turn[contestants[0]]
        for kind in contestants:
            results.append(
                {
                    "scenario": scenario,
                    "members": members,
                    "turns_per_run": turns,
                    "contestant": kind,
                    "instructions_per_turn": round(per_turn[kind]),
                    "ratio_to_round_robin": per_turn[kind] / baseline,
                }
            )
    return {"runs": RUNS, "results": results, "note": None}


if __name__ == "__main__":
    asyncio.run(_child(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])))
