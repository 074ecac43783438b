"""The offline demo behind ``autogen-capacity demo``: a burst of team runs on scripted members.

Three scripted members stand for three backends that take 4, 2 and 1 requests at once; a fourth request
in flight is answered with a 429 shaped like an SDK's ``RateLimitError``, and ``beta`` also answers 429
now and then even below its limit. The same burst of concurrent runs goes first through
:class:`~autogen_capacity.CapacityAwareGroupChat` (sharing the process's default ledger), then through
AutoGen's ``RoundRobinGroupChat``. No model, no network, no API key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from autogen_agentchat.agents import BaseChatAgent
from autogen_agentchat.base import Response, TaskResult
from autogen_agentchat.conditions import MaxMessageTermination
from autogen_agentchat.messages import BaseChatMessage, TextMessage
from autogen_agentchat.teams import RoundRobinGroupChat
from autogen_core import CancellationToken

from ._team import CapacityAwareGroupChat
from .contracts import AgentCapacity
from .events import CapacityDeferredEvent, CapacityExhaustedEvent, CapacityWaitEvent, MemberOverloadedEvent
from .exceptions import Overloaded
from .ledger import LedgerSnapshot, default_ledger

__all__ = ["Backend", "DemoResult", "PhaseStats", "ScriptedMember", "make_backends", "quiet_autogen", "run_demo"]

FLAKY_RATE = 0.04
"""How often ``beta`` answers 429 below its limit."""

RETRY_AFTER_S = 0.05
"""The Retry-After hint of every 429 in the demo."""


class RateLimitError(Exception):
    """Shaped like ``openai.RateLimitError``: a 429 ``status_code`` and a response with a retry hint."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.status_code = 429
        self.response = SimpleNamespace(status_code=429, headers={"retry-after-ms": str(int(RETRY_AFTER_S * 1000))})


@dataclass
class Backend:
    """A simulated service: serves ``limit`` requests at once and answers 429 past it."""

    name: str
    limit: int
    service_s: float
    flaky: float = 0.0
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    in_flight: int = 0
    peak: int = 0
    served: int = 0
    rejected: int = 0
    """429s for exceeding the limit."""
    throttled: int = 0
    """429s answered now and then below the limit."""

    async def serve(self) -> None:
        if self.in_flight >= self.limit:
            self.rejected += 1
            raise RateLimitError(f"429 Too Many Requests: {self.name} serves {self.limit} at once")
        if self.flaky and self.rng.random() < self.flaky:
            self.throttled += 1
            raise Overloaded("429 Too Many Requests", retry_after=RETRY_AFTER_S)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(self.service_s * (0.5 + self.rng.random()))
        finally:
            self.in_flight -= 1
        self.served += 1

    def contract(self) -> AgentCapacity:
        """The contract this backend declares: its true limit, and a short backoff schedule."""
        return AgentCapacity(
            max_concurrent=self.limit, backoff_initial_ms=250, backoff_ceiling_ms=2000, max_caller_retries=8
        )


class ScriptedMember(BaseChatAgent):
    """A member whose every turn is one request to its backend."""

    def __init__(self, backend: Backend) -> None:
        super().__init__(backend.name, description=f"Answers from the {backend.name} backend.")
        self._backend = backend

    @property
    def produced_message_types(self) -> Sequence[type[BaseChatMessage]]:
        return (TextMessage,)

    async def on_messages(self, messages: Sequence[BaseChatMessage], cancellation_token: CancellationToken) -> Response:
        await self._backend.serve()
        return Response(chat_message=TextMessage(content=f"{self.name}: done", source=self.name))

    async def on_reset(self, cancellation_token: CancellationToken) -> None:
        pass


def make_backends(scale: float = 1.0, seed: int = 7) -> list[Backend]:
    """``alpha`` (4 at once), ``beta`` (2, and flaky), ``gamma`` (1), with service times times ``scale``."""
    rng = random.Random(seed)
    return [
        Backend("alpha", 4, 0.25 * scale, rng=rng),
        Backend("beta", 2, 0.2 * scale, flaky=FLAKY_RATE, rng=rng),
        Backend("gamma", 1, 0.15 * scale, rng=rng),
    ]


@dataclass
class PhaseStats:
    """What one team class made of the burst."""

    team: str
    runs: int
    completed: int = 0
    overload_errors: int = 0
    """Runs that died on an error (the 429 a member answered)."""
    exhausted: int = 0
    """Runs that ended with a ``Capacity exhausted`` stop reason."""
    deferrals: int = 0
    waits: int = 0
    rerouted: int = 0
    """Turns moved to another member after a 429."""
    turns: int = 0
    wall_s: float = 0.0
    peaks: dict[str, int] = field(default_factory=dict)
    limits: dict[str, int] = field(default_factory=dict)
    backend_429s: int = 0

    @property
    def finished(self) -> int:
        return self.completed + self.overload_errors + self.exhausted


@dataclass
class DemoResult:
    capacity: PhaseStats
    round_robin: PhaseStats


Refresh = Callable[[PhaseStats, Sequence[Backend], LedgerSnapshot], None]


async def _capacity_run(backends: Sequence[Backend], turns: int, stats: PhaseStats, stop: CancellationToken) -> None:
    team = CapacityAwareGroupChat(
        [ScriptedMember(b) for b in backends],
        capacities={b.name: b.contract() for b in backends},
        termination_condition=MaxMessageTermination(turns + 1),
        emit_team_events=True,
    )
    try:
        async for item in team.run_stream(task="Handle one request.", cancellation_token=stop):
            if isinstance(item, CapacityDeferredEvent):
                stats.deferrals += 1
            elif isinstance(item, CapacityWaitEvent):
                stats.waits += 1
            elif isinstance(item, MemberOverloadedEvent):
                stats.rerouted += 1
            elif isinstance(item, CapacityExhaustedEvent):
                pass  # counted from the stop reason
            elif isinstance(item, TextMessage) and item.source != "user":
                stats.turns += 1
            elif isinstance(item, TaskResult):
                if (item.stop_reason or "").startswith("Capacity exhausted"):
                    stats.exhausted += 1
                else:
                    stats.completed += 1
    except Exception:
        stats.overload_errors += 1


async def _round_robin_run(backends: Sequence[Backend], turns: int, stats: PhaseStats, stop: CancellationToken) -> None:
    team = RoundRobinGroupChat(
        [ScriptedMember(b) for b in backends], termination_condition=MaxMessageTermination(turns + 1)
    )
    try:
        result = await team.run(task="Handle one request.", cancellation_token=stop)
    except Exception:  # AutoGen ends the whole run with a RuntimeError on the first 429
        stats.overload_errors += 1
        return
    stats.turns += sum(1 for m in result.messages if m.source != "user")
    stats.completed += 1


async def _phase(
    name: str,
    run_one: Callable[[Sequence[Backend], int, PhaseStats, CancellationToken], Coroutine[Any, Any, None]],
    runs: int,
    turns: int,
    scale: float,
    refresh: Refresh | None,
) -> PhaseStats:
    backends = make_backends(scale)
    stats = PhaseStats(name, runs, limits={b.name: b.limit for b in backends})
    ledger = default_ledger()
    started = time.perf_counter()
    stop = CancellationToken()  # AutoGen's way to stop a run: cancelling its task lets the run finish its turns
    tasks = [asyncio.ensure_future(run_one(backends, turns, stats, stop)) for _ in range(runs)]
    try:
        while True:
            done, _ = await asyncio.wait(tasks, timeout=0.1)
            stats.wall_s = time.perf_counter() - started
            stats.peaks = {b.name: b.peak for b in backends}
            stats.backend_429s = sum(b.rejected + b.throttled for b in backends)
            if refresh is not None:
                refresh(stats, backends, await ledger.snapshot())
            if len(done) == len(tasks):
                break
    finally:
        await _cancel(stop, tasks)
    return stats


async def _cancel(stop: CancellationToken, tasks: Sequence[asyncio.Future[None]]) -> None:
    """Stop the runs still going (on Ctrl-C) and wait until they have ended, without raising."""
    stop.cancel()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@contextlib.contextmanager
def quiet_autogen() -> Iterator[None]:
    """The plain teams' runs die on purpose, and Ctrl-C cancels every run: keep AutoGen's and asyncio's
    error logs of them off the screen. Wrap ``asyncio.run`` in it, so the loop's shutdown is quiet too."""
    loggers = [logging.getLogger(name) for name in ("autogen_core", "autogen_agentchat", "asyncio")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


async def run_demo(*, runs: int = 24, turns: int = 8, scale: float = 1.0, refresh: Refresh | None = None) -> DemoResult:
    """Run ``runs`` teams at once, ``turns`` turns each, first capacity-aware, then round robin.

    ``refresh`` is called about ten times a second with the phase's stats, the backends and the
    default ledger's snapshot (the live view).
    """
    with quiet_autogen():
        capacity = await _phase("CapacityAwareGroupChat", _capacity_run, runs, turns, scale, refresh)
        round_robin = await _phase("RoundRobinGroupChat", _round_robin_run, runs, turns, scale, refresh)
    return DemoResult(capacity, round_robin)
