"""Scenario 10, retention (opt-in: ``--only retention``): scenario 5's 1,000-turn cell, with and without the memory
RoundRobinGroupChat keeps a turn.

AutoGen's group chat manager links each turn's speaker-selection task to the run's ``CancellationToken``
(``link_future``), and the token keeps what is linked to it until the run ends: a task, its closure and its
context a turn. ``ReplayChatCompletionClient`` splits the whole prompt into words on every call (about 4 MB of
short-lived strings a call at 1,000 turns); CPython unmaps an allocator arena as soon as it is empty, so the
next call maps memory afresh and takes a page fault for each page. The memory RoundRobinGroupChat keeps pins
arenas the burst would empty, so it takes fewer page faults than a team that keeps nothing, for the same
instructions (scenario 9).

This scenario runs the 1,000-turn cell in pairs of fresh processes: one stock, one in which ``link_future``
holds what it links weakly (cancelling still cancels it while it lives; nothing is kept for the token). The
ratio to RoundRobinGroupChat in the second kind is the teams' cost without the retention effect; the page faults
show the effect itself. A diagnostic for section 5, hence opt-in (about 8 minutes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import weakref
from asyncio import Future
from collections.abc import Iterator
from typing import Any

from autogen_core import CancellationToken

from . import real_agents
from ._stats import median, ratio_summary
from ._workers import in_fresh_process

__all__ = ["MODES", "run", "weak_links"]

MODES = ("stock", "weak_links")
TURNS = 1000
PROCESSES = 6
"""Fresh processes per mode, run in pairs (one of each mode, alternating which goes first)."""
REPEATS = 2


def _link_weakly(self: CancellationToken, future: Future[Any]) -> Future[Any]:
    """``CancellationToken.link_future``, holding ``future`` weakly."""
    with self._lock:
        if self._cancelled:
            future.cancel()
        else:
            linked = weakref.ref(future)

            def _cancel() -> None:
                if (alive := linked()) is not None:
                    alive.cancel()

            self._callbacks.append(_cancel)
    return future


@contextlib.contextmanager
def weak_links() -> Iterator[None]:
    """Within the block, every ``CancellationToken`` links futures weakly (AutoGen's teams and ours alike)."""
    stock = CancellationToken.link_future
    CancellationToken.link_future = _link_weakly  # type: ignore[method-assign]
    try:
        yield
    finally:
        CancellationToken.link_future = stock  # type: ignore[method-assign]


async def measure(turns: int, repeats: int, seed: int, mode: str) -> dict[str, dict[str, list[float]]]:
    """Scenario 5's share of one process, in ``mode`` (one of ``MODES``)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    with weak_links() if mode == "weak_links" else contextlib.nullcontext():
        return await real_agents.measure(turns, repeats, seed)


async def run(quick: bool) -> dict[str, Any]:
    """Per mode and contestant: the ratio to RoundRobinGroupChat (as scenario 5 reports it) and page faults a run."""
    turns, processes, repeats = (30, 1, 1) if quick else (TURNS, PROCESSES, REPEATS)
    shares: dict[str, list[dict[str, dict[str, list[float]]]]] = {mode: [] for mode in MODES}
    for seed in range(processes):
        for mode in MODES if seed % 2 == 0 else reversed(MODES):
            shares[mode].append(await in_fresh_process(__name__, turns, repeats, seed, mode))
    results = [
        {
            "mode": mode,
            "turns": turns,
            "contestant": kind,
            "processes": processes,
            "s_per_run": median([t for share in shares[mode] for t in share["per_run"][kind]]),
            **ratio_summary([share["ratios"][kind] for share in shares[mode]]),
            "page_faults_per_run": median([n for share in shares[mode] for n in share["page_faults"][kind]]),
        }
        for mode in MODES
        for kind in real_agents.CONTESTANTS
    ]
    return {"turns": turns, "results": results}


if __name__ == "__main__":
    turns, repeats, seed = map(int, sys.argv[1:4])
    print(json.dumps(asyncio.run(measure(turns, repeats, seed, sys.argv[4]))))
