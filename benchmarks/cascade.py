"""Scenario 2, cascade: K concurrent team runs against a backend with a true concurrency limit per member.

Each member's turn is one call to a shared simulated backend: ``SERVICE_S`` of service, or an immediate
SDK-shaped 429 (``status_code=429``, ``response.headers={"Retry-After": "0.05"}``) when more than the
member's true limit are in flight. Contestants:

* ``round_robin`` and ``selector`` (SelectorGroupChat with a random ``selector_func``): AutoGen's teams with
  the usual workaround: the 429 ends the run with a ``RuntimeError``, and tenacity retries the whole run
  with exponential backoff and full jitter (``wait_random_exponential``, as the OpenAI cookbook does, scaled
  to the backend's 50 ms hint), at most ``RETRY_ATTEMPTS`` attempts; then the run counts as failed.
* ``ours_exact``: CapacityAwareGroupChat, headroom routing, contracts equal to the true limits.
* ``ours_overstated``: the same with every ``max_concurrent`` twice the true limit (429s happen and must be
  absorbed without failed runs).

All runs of our team in one cell share one InMemoryLedger (fresh per cell). Workers start runs back to back
until the measurement window ends; only turns of runs that succeeded count as goodput, and every backend
attempt in the window counts towards amplification.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Iterator, Sequence
from typing import Any

from autogen_agentchat.base import TaskResult, Team
from autogen_agentchat.messages import BaseAgentEvent, BaseChatMessage
from tenacity import AsyncRetrying, RetryError, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from autogen_capacity import AgentCapacity, InMemoryLedger, Lease

from ._agents import Backend, BackendAgent, SlotClock
from ._stats import jain, median, percentile
from ._teams import build_team

__all__ = ["LIMITS", "SERVICE_S", "TARGETS", "run"]

LIMITS = {"small_1": 1, "small_2": 1, "medium": 2, "large": 4}
"""Each member's true concurrency limit at the backend (8 slots in all: uneven, so fairness means something)."""
SERVICE_S = 0.020
"""Service time of one backend call."""
RETRY_ATTEMPTS = 6
"""The workaround's bound on attempts per run."""
TARGETS = {"goodput_ratio_min": 0.90, "amplification_max": 1.02, "rejected_max": 0, "jain_min": 0.95}
"""For ``ours_exact`` at the largest K."""

CONTESTANTS = ("round_robin", "selector", "ours_exact", "ours_overstated")


def _contracts(factor: int) -> dict[str, AgentCapacity]:
    # A provider's honest contract for a 20 ms service with a 50 ms Retry-After: wait 50 ms, doubling, up
    # to 2 s, a dozen times (about 15 s at worst) before giving up on the turn.
    return {
        name: AgentCapacity(
            max_concurrent=limit * factor, backoff_initial_ms=50, backoff_ceiling_ms=2000, max_caller_retries=12
        )
        for name, limit in LIMITS.items()
    }


class _TimedLedger(InMemoryLedger):
    """An InMemoryLedger that also records how many leases are held over time."""

    def __init__(self) -> None:
        super().__init__()
        self.leased = SlotClock()

    async def try_acquire(self, key: str, capacity: AgentCapacity) -> Lease | None:
        lease = await super().try_acquire(key, capacity)
        if lease is None:
            return None
        loop = asyncio.get_running_loop()
        self.leased.change(loop.time(), +1)

        async def release(_: Lease) -> None:
            self.leased.change(loop.time(), -1)
            await lease.release()

        return Lease(lease.key, lease.lease_id, lease.acquired_at, release)


def _random_selector(rng: random.Random) -> Any:
    names = list(LIMITS)

    def select(thread: Sequence[BaseAgentEvent | BaseChatMessage]) -> str:
        return rng.choice(names)

    return select


class _Cell:
    """One contestant at one K: the backend, the counters, and the workers."""

    def __init__(self, kind: str, k: int, turns: int, seed: int, ledger: Any = None) -> None:
        self.kind = kind
        self.k = k
        self.turns = turns
        self.backend = Backend(dict(LIMITS), SERVICE_S)
        self.ledger = ledger if ledger is not None else _TimedLedger()  # any ledger with a ``leased`` SlotClock
        self.rng = random.Random(seed)
        self.good: list[tuple[str, float]] = []  # (member, time) of every turn of a successful run
        self.latencies: list[tuple[float, float]] = []  # (start, seconds) of every successful run
        self.failed: list[float] = []  # start of every failed run

    def team(self, turns_log: list[tuple[str, float]]) -> Team:
        agents = [BackendAgent(name, self.backend, turns_log) for name in LIMITS]
        if self.kind in ("round_robin", "selector"):
            return build_team(self.kind, agents, max_turns=self.turns, selector_func=_random_selector(self.rng))
        factor = 2 if self.kind == "ours_overstated" else 1
        return build_team(
            "ours_headroom", agents, max_turns=self.turns, capacities=_contracts(factor), ledger=self.ledger
        )

    async def worker(self, stop_at: float) -> None:
        """Start runs back to back until ``stop_at``; one fresh team per attempt (one team per request)."""
        loop = asyncio.get_running_loop()
        log: list[tuple[str, float]] = []
        while loop.time() < stop_at:
            start = loop.time()
            ok = await self._one_run(log)
            if ok:
                self.good.extend(log)
                self.latencies.append((start, loop.time() - start))
            else:
                self.failed.append(start)

    async def _one_run(self, log: list[tuple[str, float]]) -> bool:
        if self.kind.startswith("ours"):
            log.clear()
            result = await self.team(log).run(task="go")
            return _complete(result, self.turns)
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(RuntimeError),
                wait=wait_random_exponential(multiplier=0.05, max=2.0),
                stop=stop_after_attempt(RETRY_ATTEMPTS),
            ):
                with attempt:
                    log.clear()
                    result = await self.team(log).run(task="go")
                    if not _complete(result, self.turns):
                        raise RuntimeError(f"incomplete run: {result.stop_reason}")
        except RetryError:
            return False
        return True


@contextlib.contextmanager
def _quiet_runtime() -> Iterator[None]:
    """AutoGen's runtime logs every failed handler with its traceback; thousands of 429s are expected here."""
    runtime_logger = logging.getLogger("autogen_core")
    level = runtime_logger.level
    runtime_logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        runtime_logger.setLevel(level)


def _complete(result: TaskResult, turns: int) -> bool:
    return len(result.messages) == turns + 1 and not (result.stop_reason or "").startswith("Capacity exhausted")


async def _measure(
    kind: str, k: int, turns: int, warmup_s: float, window_s: float, grace_s: float, *, ledger: Any = None
) -> dict[str, Any]:
    """One cell; ``ledger``: our team's ledger instead of a fresh in-memory one (it must record ``leased``)."""
    cell = _Cell(kind, k, turns, seed=k, ledger=ledger)
    loop = asyncio.get_running_loop()
    begin = loop.time()
    window = (begin + warmup_s, begin + warmup_s + window_s)
    workers = [asyncio.ensure_future(cell.worker(window[1])) for _ in range(k)]
    await asyncio.sleep(warmup_s)
    backend = cell.backend
    attempts0, rejected0 = backend.attempts, backend.rejected
    busy0, served0 = backend.busy_s, sum(backend.served.values())
    backend.peak = dict.fromkeys(LIMITS, 0)
    cpu0 = time.process_time()
    await asyncio.sleep(window_s)
    cpu = (time.process_time() - cpu0) / window_s
    attempts, rejected = backend.attempts - attempts0, backend.rejected - rejected0
    served = sum(backend.served.values()) - served0
    service_s = (backend.busy_s - busy0) / served if served else SERVICE_S
    peak = dict(backend.peak)
    _, pending = await asyncio.wait(workers, timeout=grace_s)
    for task in pending:  # runs still retrying long after the window: their turns never counted
        task.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    await cell.ledger.aclose()

    slot_s = sum(LIMITS.values()) * window_s
    serving_s = backend.serving.slot_seconds(*window)
    leased_s = cell.ledger.leased.slot_seconds(*window) if kind.startswith("ours") else math.nan
    in_window = [name for name, at in cell.good if window[0] <= at < window[1]]
    per_member = {name: in_window.count(name) for name in LIMITS}
    done = len(in_window)
    limit_rate = sum(LIMITS.values()) / SERVICE_S
    capacity_share = {name: limit / sum(LIMITS.values()) for name, limit in LIMITS.items()}
    shares = {name: (per_member[name] / done if done else 0.0) for name in LIMITS}
    latencies = [s for start, s in cell.latencies if start >= window[0] and start < window[1]]
    failed = sum(1 for start in cell.failed if window[0] <= start < window[1])
    goodput = done / window_s
    return {
        "contestant": kind,
        "k": k,
        "turns_per_run": turns,
        "window_s": window_s,
        "goodput_turns_s": goodput,
        "limit_turns_s": limit_rate,
        "goodput_ratio": goodput / limit_rate,
        "measured_service_ms": service_s * 1000,
        "goodput_ratio_measured_service": goodput / (sum(LIMITS.values()) / service_s),
        "completed_turns": done,
        "backend_attempts": attempts,
        "amplification": attempts / done if done else float("inf"),
        "rejected_429": rejected,
        "runs_completed": len(latencies),
        "runs_failed": failed,
        "run_latency_p50_s": percentile(latencies, 50),
        "run_latency_p99_s": percentile(latencies, 99),
        "peak_in_flight": peak,
        "peak_over_limit": max(peak[name] / LIMITS[name] for name in LIMITS),
        "turn_share": shares,
        "capacity_share": capacity_share,
        "jain": jain([shares[name] / capacity_share[name] for name in LIMITS]),
        "cancelled_after_window": len(pending),
        # Where the slots' time went, in ms per completed turn: serving at the backend, leased but not at the
        # backend (the request on its way to the member, the reply on its way back), and not leased at all
        # (a freed slot on its way to the next team, or nobody waiting).
        "slot_ms_per_turn": {
            "serving": 1e3 * serving_s / done if done else math.nan,
            "leased_not_serving": 1e3 * (leased_s - serving_s) / done if done else math.nan,
            "not_leased": 1e3 * (slot_s - leased_s) / done if done else math.nan,
        },
        "cpu_busy": cpu,
    }


def _verdict(row: dict[str, Any]) -> dict[str, bool]:
    return {
        "goodput": row["goodput_ratio"] >= TARGETS["goodput_ratio_min"],
        "goodput_of_measured_service": row["goodput_ratio_measured_service"] >= TARGETS["goodput_ratio_min"],
        "amplification": row["amplification"] <= TARGETS["amplification_max"],
        "no_429": row["rejected_429_max"] <= TARGETS["rejected_max"],
        "jain": row["jain"] >= TARGETS["jain_min"],
        "no_failed_runs": row["runs_failed_max"] == 0,
    }


_WORST = ("rejected_429", "runs_failed", "cancelled_after_window")
"""Counts reported as their worst repeat as well (a target of zero must hold in every repeat)."""


def _combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One cell from its repeats: the median of every number, the worst repeat of every count."""
    row: dict[str, Any] = dict(runs[-1])
    for key, value in runs[0].items():
        if isinstance(value, int | float) and not isinstance(value, bool) and key not in ("k", "turns_per_run"):
            row[key] = median([r[key] for r in runs])
    for name in ("turn_share", "peak_in_flight", "slot_ms_per_turn"):
        row[name] = {part: median([r[name][part] for r in runs]) for part in runs[0][name]}
    for key in _WORST:
        row[f"{key}_max"] = max(r[key] for r in runs)
    row["repeats"] = len(runs)
    row["goodput_ratio_per_repeat"] = [round(r["goodput_ratio"], 4) for r in runs]
    return row


async def run(quick: bool) -> dict[str, Any]:
    """Goodput, amplification, 429s, failed runs, latency, peak in flight and fairness per contestant and K
    (medians over repeats; every repeat runs the contestants of a K in a fresh shuffled order)."""
    ks = (8, 32, 128) if not quick else (8,)
    turns = 8 if not quick else 4
    repeats = 3 if not quick else 1
    warmup_s, window_s, grace_s = (1.0, 8.0, 5.0) if not quick else (0.3, 1.5, 2.0)
    rows: list[dict[str, Any]] = []
    rng = random.Random(0)
    for k in ks:
        runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in CONTESTANTS}
        for _ in range(repeats):
            order = list(CONTESTANTS)
            rng.shuffle(order)
            for kind in order:
                with _quiet_runtime():
                    runs[kind].append(await _measure(kind, k, turns, warmup_s, window_s, grace_s))
        for kind in CONTESTANTS:
            row = _combine(runs[kind])
            if kind.startswith("ours"):
                row["targets"] = _verdict(row)
            rows.append(row)
    return {
        "limits": LIMITS,
        "service_s": SERVICE_S,
        "retry_after_s": 0.05,
        "retry_attempts": RETRY_ATTEMPTS,
        "repeats": repeats,
        "targets": TARGETS,
        "results": rows,
    }
