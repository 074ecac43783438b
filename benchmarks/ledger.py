"""Scenario 4, ledger: acquire + release per second and latency, InMemoryLedger and RedisLedger.

One key with ample slots. Closed loop: 1 task, then 64 concurrent tasks, each doing acquire-then-release
pairs back to back (the saturation rate; with 64 callers always in flight, latency is 64 / rate by Little's
law). Open loop (RedisLedger): pairs started at a fixed offered rate, at most 64 in flight, for the latency
a caller sees at that rate; each pair's latency counts from its start, a wait for the in-flight bound
included. Redis runs on loopback in a throwaway ``redis-server`` (skipped, with a note, when the binary is
missing).
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from autogen_capacity import AgentCapacity, CapacityLedger, InMemoryLedger

from ._stats import median, percentile

__all__ = ["TARGETS", "run"]

TARGETS = {"memory_ops_s_min": 100_000, "redis_ops_s_min": 5_000, "redis_p99_ms_max": 2.0}
OFFERED = (1_000, 2_000, 5_000)
"""Open-loop rates (pairs/s) for RedisLedger; the last is the target's."""
IN_FLIGHT_MAX = 64
_CAP = AgentCapacity(max_concurrent=1_000_000)
_REDIS_HELPER = Path(__file__).resolve().parent.parent / "tests" / "redis_server.py"


def _redis_helper() -> ModuleType | None:
    """``tests/redis_server.py``, imported by path (it is not part of the package)."""
    if not _REDIS_HELPER.exists():
        return None
    spec = importlib.util.spec_from_file_location("_benchmark_redis_server", _REDIS_HELPER)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def _pairs(ledger: CapacityLedger, count: int, latencies: list[float]) -> None:
    for _ in range(count):
        start = time.perf_counter()
        lease = await ledger.try_acquire("bench", _CAP)
        assert lease is not None
        await lease.release()
        latencies.append(time.perf_counter() - start)


async def _measure(ledger: CapacityLedger, tasks: int, total: int) -> dict[str, float]:
    await _pairs(ledger, min(total // 10, 1000), [])  # warm-up (scripts loaded, connections open)
    latencies: list[float] = []
    start = time.perf_counter()
    await asyncio.gather(*(_pairs(ledger, total // tasks, latencies) for _ in range(tasks)))
    elapsed = time.perf_counter() - start
    return {
        "ops_s": len(latencies) / elapsed,
        "p50_ms": median(latencies) * 1e3,
        "p99_ms": percentile(latencies, 99) * 1e3,
    }


async def _open_loop(ledger: CapacityLedger, rate: float, seconds: float) -> dict[str, float]:
    """Start pairs at ``rate`` a second for ``seconds`` (at most ``IN_FLIGHT_MAX`` in flight)."""
    loop = asyncio.get_running_loop()
    bound = asyncio.Semaphore(IN_FLIGHT_MAX)
    latencies: list[float] = []
    finished = 0.0

    async def pair() -> None:
        nonlocal finished
        start = loop.time()
        async with bound:
            lease = await ledger.try_acquire("bench", _CAP)
            assert lease is not None
            await lease.release()
        finished = loop.time()
        latencies.append(finished - start)

    count = int(rate * seconds)
    begin = loop.time()
    pairs = []
    for i in range(count):
        delay = begin + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        pairs.append(asyncio.ensure_future(pair()))
    await asyncio.gather(*pairs)
    return {
        "offered_s": rate,
        "ops_s": count / (finished - begin),
        "p50_ms": median(latencies) * 1e3,
        "p99_ms": percentile(latencies, 99) * 1e3,
        "max_ms": max(latencies) * 1e3,
    }


async def _open_loop_rows(ledger: CapacityLedger, quick: bool, repeats: int) -> list[dict[str, Any]]:
    """The open-loop sweep, then the target's rate again with the start-up heap frozen out of the collector
    (``gc.freeze()``): what is left of the tail once full collections stop walking the imported modules."""
    seconds = 4.0 if not quick else 0.3
    rows: list[dict[str, Any]] = []
    for rate, frozen in [*((r, False) for r in (OFFERED if not quick else OFFERED[:1])), (OFFERED[-1], True)]:
        if frozen:
            gc.freeze()
        try:
            runs = [await _open_loop(ledger, rate, seconds) for _ in range(repeats)]
        finally:
            if frozen:
                gc.unfreeze()
        row: dict[str, Any] = {"ledger": "redis", "tasks": f"<= {IN_FLIGHT_MAX}", "gc_frozen": frozen}
        for metric in runs[0]:
            row[metric] = median([r[metric] for r in runs])
        rows.append(row)
    return rows


async def run(quick: bool) -> dict[str, Any]:
    """Pairs per second and p50/p99 latency per backend and concurrency (median of interleaved repeats)."""
    memory_total = 100_000 if not quick else 5_000
    redis_total = 20_000 if not quick else 640
    repeats = 3 if not quick else 1
    rows: list[dict[str, Any]] = []
    note = None
    memory = InMemoryLedger()
    helper = _redis_helper()
    if helper is None or helper.REDIS_SERVER is None:
        note = "redis-server binary not found: RedisLedger skipped"
        server_cm = None
    else:
        server_cm = helper.running_redis()
    redis_ledger: CapacityLedger | None = None
    server = server_cm.__enter__() if server_cm is not None else None
    try:
        if server is not None:
            from autogen_capacity.ledger.redis import RedisLedger

            redis_ledger = RedisLedger(server.url, namespace="bench")
        for tasks in (1, 64):
            samples: dict[str, list[dict[str, float]]] = {"memory": [], "redis": []}
            for _ in range(repeats):
                samples["memory"].append(await _measure(memory, tasks, memory_total))
                if redis_ledger is not None:
                    samples["redis"].append(await _measure(redis_ledger, tasks, redis_total))
            for backend, runs in samples.items():
                if not runs:
                    continue
                row: dict[str, Any] = {"ledger": backend, "tasks": tasks}
                for metric in ("ops_s", "p50_ms", "p99_ms"):
                    row[metric] = median([r[metric] for r in runs])
                rows.append(row)
        open_rows = await _open_loop_rows(redis_ledger, quick, repeats) if redis_ledger is not None else []
    finally:
        if redis_ledger is not None:
            await redis_ledger.aclose()
        if server_cm is not None:
            server_cm.__exit__(None, None, None)
        await memory.aclose()
    return {"targets": TARGETS, "results": rows, "open_loop": open_rows, "note": note, **_verdicts(rows, open_rows)}


def _verdicts(rows: list[dict[str, Any]], open_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """In-memory: the closed-loop rate. Redis: both numbers at once, which only an open loop can show
    (closed, 64 callers in flight at 5k/s wait 12.8 ms each by Little's law, whatever the ledger)."""
    memory = [r for r in rows if r["ledger"] == "memory"]
    verdict: dict[str, Any] = {
        "memory_meets_target": all(r["ops_s"] >= TARGETS["memory_ops_s_min"] for r in memory),
        "redis_meets_target": None,
    }
    at_target = [r for r in open_rows if r["offered_s"] == OFFERED[-1] and not r["gc_frozen"]]
    if at_target:
        row = at_target[0]
        keeps_up = row["ops_s"] >= 0.98 * TARGETS["redis_ops_s_min"]
        verdict["redis_meets_target"] = keeps_up and row["p99_ms"] <= TARGETS["redis_p99_ms_max"]
    return verdict
