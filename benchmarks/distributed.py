"""Scenario 6, distributed: the cascade's load (``ours_exact``) on one process, RedisLedger against InMemoryLedger.

The same cell as scenario 2 (K concurrent runs of our team, contracts equal to the backend's true limits), once
on a fresh ``InMemoryLedger`` and once on a fresh ``RedisLedger`` (its own namespace) on a throwaway
``redis-server`` on loopback, interleaved in each repeat (shuffled order). Reported per ledger: the goodput
ratio (completed turns a second over the backend's physical limit), and for Redis the ratio of the two (the
target: >= 0.75), the Lua scripts Redis ran per member turn (``INFO commandstats``: ``evalsha`` and ``eval``
calls in the window over the backend calls in it) and the round trips (pipelined batches the ledger sent) per
member turn. Skipped, with a note, when the ``redis-server`` binary is missing.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from autogen_capacity import AgentCapacity, KeyStatus, Lease

from . import cascade
from ._agents import SlotClock, timed
from ._stats import median
from .ledger import _redis_helper

__all__ = ["TARGETS", "run"]

TARGETS = {"redis_to_memory_min": 0.75}
SERVICE_S = cascade.SERVICE_TIMES_S[0]
"""The cascade's 20 ms service time: the CPU-bound case, where the ledger's cost shows."""


def _timed_redis_ledger(url: str, namespace: str) -> Any:
    """A RedisLedger that records how many leases it holds over time and counts the batches it sends."""
    from autogen_capacity.ledger.redis import RedisLedger

    class TimedRedisLedger(RedisLedger):
        def __init__(self) -> None:
            super().__init__(url, namespace=namespace)
            self.leased = SlotClock()
            self.batches = 0
            pipeline = self._pipeline
            send = pipeline._pipeline

            async def counted(calls: Any) -> list[Any]:
                self.batches += 1
                return await send(calls)

            pipeline._pipeline = counted  # type: ignore[method-assign]

        async def acquire_or_status(
            self, key: str, capacity: AgentCapacity, *, idle_only: bool = False
        ) -> Lease | KeyStatus:
            return timed(await super().acquire_or_status(key, capacity, idle_only=idle_only), self.leased)

    return TimedRedisLedger()


async def _scripts_run(client: Any) -> int:
    stats = await client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "eval"))


async def _redis_cell(
    url: str, namespace: str, k: int, turns: int, timing: tuple[float, float, float]
) -> dict[str, Any]:
    """One cascade cell on a RedisLedger, with the scripts and batches counted over the measurement window."""
    from redis.asyncio import Redis

    warmup_s, window_s, _ = timing
    ledger = _timed_redis_ledger(url, namespace)
    counter = Redis.from_url(url)
    counts: dict[str, int] = {}
    loop = asyncio.get_running_loop()

    async def count_window() -> None:
        await asyncio.sleep(warmup_s)
        scripts0, batches0 = await _scripts_run(counter), ledger.batches
        await asyncio.sleep(window_s)
        counts["scripts"] = await _scripts_run(counter) - scripts0
        counts["batches"] = ledger.batches - batches0

    try:
        counting = loop.create_task(count_window())
        row = await cascade._measure("ours_exact", k, turns, SERVICE_S, *timing, ledger=ledger)
        await counting
    finally:
        await counter.aclose()
    turns_in_window = max(row["backend_attempts"], 1)
    row["scripts_per_turn"] = counts["scripts"] / turns_in_window
    row["round_trips_per_turn"] = counts["batches"] / turns_in_window
    return row


async def run(quick: bool) -> dict[str, Any]:
    """Per K: the goodput ratio on each ledger (median of interleaved repeats), their ratio, and Redis' scripts
    and round trips per member turn."""
    helper = _redis_helper()
    if helper is None or helper.REDIS_SERVER is None:
        return {"targets": TARGETS, "results": [], "note": "redis-server binary not found: scenario skipped"}
    ks = (8, 32, 128) if not quick else (8,)
    turns = 8 if not quick else 4
    repeats = 5 if not quick else 1  # single repeats of one ledger vary by 0.1 and more on a shared machine
    timing = (1.0, 8.0, 5.0) if not quick else (0.3, 1.0, 2.0)
    rng = random.Random(0)
    rows: list[dict[str, Any]] = []
    with helper.running_redis() as server:
        for k in ks:
            runs: dict[str, list[dict[str, Any]]] = {"memory": [], "redis": []}
            for repeat in range(repeats):
                order = ["memory", "redis"]
                rng.shuffle(order)
                for backend in order:
                    with cascade._quiet_runtime():
                        if backend == "memory":
                            runs[backend].append(await cascade._measure("ours_exact", k, turns, SERVICE_S, *timing))
                        else:
                            namespace = f"bench{k}_{repeat}"
                            runs[backend].append(await _redis_cell(server.url, namespace, k, turns, timing))
            memory = median([r["goodput_ratio"] for r in runs["memory"]])
            redis = median([r["goodput_ratio"] for r in runs["redis"]])
            ratios = [
                r["goodput_ratio"] / m["goodput_ratio"] for r, m in zip(runs["redis"], runs["memory"], strict=True)
            ]
            rows.append(
                {
                    "k": k,
                    "turns_per_run": turns,
                    "repeats": repeats,
                    "memory_goodput_ratio": memory,
                    "redis_goodput_ratio": redis,
                    "redis_to_memory": median(ratios),
                    "redis_to_memory_per_repeat": [round(x, 3) for x in ratios],
                    "scripts_per_turn": median([r["scripts_per_turn"] for r in runs["redis"]]),
                    "round_trips_per_turn": median([r["round_trips_per_turn"] for r in runs["redis"]]),
                    "memory_cpu_busy": median([r["cpu_busy"] for r in runs["memory"]]),
                    "redis_cpu_busy": median([r["cpu_busy"] for r in runs["redis"]]),
                    "redis_peak_over_limit": max(r["peak_over_limit"] for r in runs["redis"]),
                    "redis_runs_failed": max(r["runs_failed"] for r in runs["redis"]),
                    "meets_target": median(ratios) >= TARGETS["redis_to_memory_min"],
                }
            )
    return {"targets": TARGETS, "results": rows, "note": None}
