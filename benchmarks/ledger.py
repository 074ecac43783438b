"""Scenario 4, ledger: acquire + release per second and latency, InMemoryLedger and RedisLedger.

One key with ample slots; 1 task, then 64 concurrent tasks, each doing acquire-then-release pairs. Redis
runs on loopback in a throwaway ``redis-server`` (skipped, with a note, when the binary is missing).
"""

from __future__ import annotations

import asyncio
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
    finally:
        if redis_ledger is not None:
            await redis_ledger.aclose()
        if server_cm is not None:
            server_cm.__exit__(None, None, None)
        await memory.aclose()
    return {"targets": TARGETS, "results": rows, "note": note, **_verdicts(rows)}


def _verdicts(rows: list[dict[str, Any]]) -> dict[str, Any]:
    memory = [r for r in rows if r["ledger"] == "memory"]
    redis = [r for r in rows if r["ledger"] == "redis"]
    verdict: dict[str, Any] = {
        "memory_meets_target": all(r["ops_s"] >= TARGETS["memory_ops_s_min"] for r in memory),
        "redis_meets_target": None,
    }
    if redis:
        # Both numbers must hold in the same cell: a fast cell and a low-latency cell are not one result.
        verdict["redis_cells_meeting_target"] = [
            r["tasks"]
            for r in redis
            if r["ops_s"] >= TARGETS["redis_ops_s_min"] and r["p99_ms"] <= TARGETS["redis_p99_ms_max"]
        ]
        verdict["redis_meets_target"] = len(verdict["redis_cells_meeting_target"]) == len(redis)
    return verdict
