"""Scenario 7, priorities and deadlines (issue 18): critical work first under overload, fail fast, no starvation.

* ``mixed``: runs of two turns arrive (seeded Poisson) at about twice what the backends serve, half of them
  ``priority="critical"``, half ``"sheddable"``, with a ``max_queue`` per key; the same critical runs, at the
  same arrival times, then run alone. Reported: the critical runs' p99 latency mixed over alone (target <= 1.5),
  critical runs completed (target: all), and which classes ended ``Capacity exhausted`` (target: sheddable only).
* ``fail_fast``: the cascade's 128 concurrent runs of 4 turns at 200 ms on members with 1, 2 and 3 true slots,
  each run with ``deadline_s`` too short for the backlog. Every run that ends ``Capacity exhausted`` is timed
  from the moment it could know (the first pass of its admission whose expected wait in line, its place times
  the keys' observed service times, exceeded the time its deadline left) to the end of its run
  (target: <= 100 ms), and the completed runs are compared with the same load when waits are not cut short
  (``waited out``: the engine's fail-fast turned off), where nothing served must be lost.
* ``starvation``: one slot kept busy by a steady stream of critical callers; a default caller joins and is
  admitted within the aging bound (``aging_s`` plus the service times of the waiters ranked ahead of it when it
  reaches the top class).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from autogen_agentchat.base import TaskResult

from autogen_capacity import AgentCapacity, CapacityAwareGroupChat, InMemoryLedger, _engine, acquire
from autogen_capacity.deadlines import should_fail_fast
from autogen_capacity.priority import Priority

from ._agents import Backend, BackendAgent
from ._stats import percentile
from .cascade import _quiet_runtime

__all__ = ["TARGETS", "run"]

TARGETS = {"critical_p99_ratio_max": 1.5, "fail_fast_latency_max_s": 0.1}
_MIXED_LIMITS = {"a": 2, "b": 2}
_CASCADE_LIMITS = {"small": 1, "medium": 2, "large": 3}


def _contract(slots: int, *, max_queue: int | None = None, retries: int = 400) -> AgentCapacity:
    return AgentCapacity(
        max_concurrent=slots,
        max_queue=max_queue,
        backoff_strategy="constant",
        backoff_initial_ms=50,
        backoff_ceiling_ms=50,
        backoff_jitter=False,
        max_caller_retries=retries,
    )


def _team(
    backend: Backend,
    capacities: dict[str, AgentCapacity],
    turns: int,
    ledger: InMemoryLedger,
    *,
    priority: Priority = "default",
    deadline_s: float | None = None,
) -> CapacityAwareGroupChat:
    log: list[tuple[str, float]] = []
    return CapacityAwareGroupChat(
        [BackendAgent(name, backend, log) for name in capacities],
        capacities=capacities,
        ledger=ledger,
        max_turns=turns,
        routing="headroom",
        priority=priority,
        deadline_s=deadline_s,
    )


def _exhausted(result: TaskResult) -> bool:
    return (result.stop_reason or "").startswith("Capacity exhausted")


async def _mixed_arm(
    arrivals: list[tuple[float, Priority]], service_s: float, turns: int, max_queue: int
) -> dict[str, list[tuple[float, bool]]]:
    """Each run's (latency, completed) by class, for runs started at the given offsets."""
    backend = Backend(dict(_MIXED_LIMITS), service_s)
    ledger = InMemoryLedger()
    capacities = {name: _contract(slots, max_queue=max_queue) for name, slots in _MIXED_LIMITS.items()}
    loop = asyncio.get_running_loop()
    start = loop.time()
    out: dict[str, list[tuple[float, bool]]] = {"critical": [], "sheddable": []}

    async def one(at: float, priority: Priority) -> None:
        await asyncio.sleep(max(start + at - loop.time(), 0.0))
        began = loop.time()
        result = await _team(backend, capacities, turns, ledger, priority=priority).run(task="go")
        out[priority].append((loop.time() - began, not _exhausted(result) and len(result.messages) == turns + 1))

    await asyncio.gather(*(one(at, priority) for at, priority in arrivals))
    await ledger.aclose()
    return out


async def _mixed(quick: bool) -> dict[str, Any]:
    service_s, turns = 0.1, 2
    capacity_runs_s = sum(_MIXED_LIMITS.values()) / service_s / turns  # runs a second the backends serve
    window_s = 1.5 if quick else 4.0
    rng = random.Random(7)
    arrivals: list[tuple[float, Priority]] = []
    for priority in ("critical", "sheddable"):
        t = 0.0
        while True:
            t += rng.expovariate(0.9 * capacity_runs_s)
            if t >= window_s:
                break
            arrivals.append((t, priority))  # type: ignore[arg-type]
    max_queue = 24
    alone = await _mixed_arm([a for a in arrivals if a[1] == "critical"], service_s, turns, max_queue)
    mixed = await _mixed_arm(arrivals, service_s, turns, max_queue)
    alone_p99 = percentile([s for s, _ in alone["critical"]], 99)
    mixed_p99 = percentile([s for s, ok in mixed["critical"]], 99)
    critical_done = sum(ok for _, ok in mixed["critical"])
    row = {
        "offered_load": round(2 * 0.9, 2),
        "critical_runs": len(mixed["critical"]),
        "sheddable_runs": len(mixed["sheddable"]),
        "critical_p99_alone_s": alone_p99,
        "critical_p99_mixed_s": mixed_p99,
        "critical_p99_ratio": mixed_p99 / alone_p99,
        "critical_completed": critical_done,
        "sheddable_completed": sum(ok for _, ok in mixed["sheddable"]),
        "sheddable_ended_exhausted": sum(not ok for _, ok in mixed["sheddable"]),
    }
    row["targets"] = {
        "critical p99 <= 1.5x alone": row["critical_p99_ratio"] <= TARGETS["critical_p99_ratio_max"],
        "every critical run completes": critical_done == len(mixed["critical"]),
        "the shed runs are sheddable": critical_done == len(mixed["critical"]) and row["sheddable_ended_exhausted"] > 0,
    }
    return row


_RUN: ContextVar[int] = ContextVar("benchmark_run", default=-1)


_KNEW: dict[int, float] = {}
"""Per run: when its admission first found its expected wait in line longer than the time it had left."""


@contextlib.contextmanager
def _knowing() -> Iterator[None]:
    """Record, per run, the first pass whose expected wait already exceeded what the run had left."""
    fail_fast = _engine._fail_fast

    def recording(expected: float | None, remaining: float, *args: Any) -> None:
        if expected is not None and should_fail_fast(expected, remaining):
            _KNEW.setdefault(_RUN.get(), asyncio.get_running_loop().time())
        fail_fast(expected, remaining, *args)

    _engine._fail_fast = recording  # type: ignore[assignment]
    try:
        yield
    finally:
        _engine._fail_fast = fail_fast


@contextlib.contextmanager
def _waits_not_cut_short() -> Iterator[None]:
    """The engine as it was before issue 18: a wait is never ended on its expected length."""
    fail_fast = _engine._fail_fast
    _engine._fail_fast = lambda *args, **kwargs: None  # type: ignore[assignment]
    try:
        yield
    finally:
        _engine._fail_fast = fail_fast


async def _cascade_arm(k: int, turns: int, service_s: float, deadline_s: float) -> dict[str, Any]:
    backend = Backend(dict(_CASCADE_LIMITS), service_s)
    ledger = InMemoryLedger()
    _KNEW.clear()
    capacities = {name: _contract(slots) for name, slots in _CASCADE_LIMITS.items()}
    loop = asyncio.get_running_loop()
    started = loop.time()
    ended: list[tuple[bool, float, float | None]] = []  # (completed, end, first wait in line)

    async def one(run: int) -> None:
        _RUN.set(run)  # the team's runtime, and the admissions it makes, run in this context
        team = _team(backend, capacities, turns, ledger, deadline_s=deadline_s)
        result = await team.run(task="go")
        ok = not _exhausted(result) and len(result.messages) == turns + 1
        ended.append((ok, loop.time(), _KNEW.get(run)))

    await asyncio.gather(*(one(run) for run in range(k)))
    latencies = [end - knew for ok, end, knew in ended if not ok and knew is not None]
    await ledger.aclose()
    return {
        "completed": sum(ok for ok, _, _ in ended),
        "ended": sum(not ok for ok, _, _ in ended),
        "ended_knowing": len(latencies),
        "latency_p50_s": percentile(latencies, 50) if latencies else 0.0,
        "latency_max_s": max(latencies, default=0.0),
        "longest_run_s": max(end for _, end, _ in ended) - started,
        "backend_429s": backend.rejected,
    }


async def _fail_fast(quick: bool) -> dict[str, Any]:
    k, turns, service_s, deadline_s = (32, 2, 0.2, 1.0) if quick else (128, 4, 0.2, 3.0)
    with _knowing():
        cut = await _cascade_arm(k, turns, service_s, deadline_s)
    with _waits_not_cut_short(), _knowing():
        waited = await _cascade_arm(k, turns, service_s, deadline_s)
    row = {"k": k, "turns_per_run": turns, "service_ms": round(service_s * 1000), "deadline_s": deadline_s}
    row |= {f"fail_fast_{name}": value for name, value in cut.items()}
    row |= {f"waited_out_{name}": value for name, value in waited.items()}
    row["targets"] = {
        "ended within 100 ms of knowing": cut["latency_max_s"] <= TARGETS["fail_fast_latency_max_s"],
        "no served run lost": cut["completed"] >= waited["completed"],
    }
    return row


async def _starvation(quick: bool) -> dict[str, Any]:
    aging_s, service_s, callers = (0.3, 0.02, 4) if quick else (1.0, 0.05, 6)
    ledger = InMemoryLedger(aging_s=aging_s)
    cap = _contract(1, retries=100_000)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    async def critical_stream() -> None:
        while not stop.is_set():
            async with contextlib.AsyncExitStack() as stack:
                held = await acquire("k", cap, ledger=ledger, priority="critical")
                stack.push_async_callback(held.release)
                await asyncio.sleep(service_s)

    stream = [asyncio.ensure_future(critical_stream()) for _ in range(callers)]
    await asyncio.sleep(10 * service_s)  # the line is full of critical callers
    joined = loop.time()
    lease = await acquire("k", cap, ledger=ledger, priority="default")
    waited = loop.time() - joined
    await lease.release()
    stop.set()
    await asyncio.gather(*stream)
    await ledger.aclose()
    bound = aging_s + callers * service_s  # top class after aging_s; then at most the waiters already in line
    return {
        "aging_s": aging_s,
        "critical_callers": callers,
        "service_ms": round(service_s * 1000),
        "default_waited_s": waited,
        "bound_s": bound,
        "targets": {"admitted within the aging bound": waited <= bound},
    }


async def run(quick: bool) -> dict[str, Any]:
    """The three measurements, each with its targets."""
    with _quiet_runtime():
        return {
            "targets": TARGETS,
            "mixed": await _mixed(quick),
            "fail_fast": await _fail_fast(quick),
            "starvation": await _starvation(quick),
        }
