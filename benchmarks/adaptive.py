"""Scenario 8, live capacity (issue 17): contracts that overstate a provider's limit, learned down to it.

Runs of our team (one member, four turns each, K workers back to back) call a simulated provider whose true
concurrency limit is 3: a request past it is answered at once with a 429 and ``Retry-After: 1``; a served one
takes a seeded log-normal time around 1 s. Three arms run the same load, side by side: the member declares
``max_concurrent=8, adaptive=True``; ``max_concurrent=3`` (exact); ``max_concurrent=8`` (static, overstated).
Then the adaptive arm goes on while the provider's limit rises to 6, and later drops to 2.

Everything runs on an event loop with virtual time (``VirtualTimeLoop``: when nothing is ready, the clock
jumps to the next timer), so minutes of traffic cost seconds, the results are the same on every machine, and
"seconds" below are simulated seconds.
"""

from __future__ import annotations

import asyncio
import random
import selectors
from collections.abc import Sequence
from typing import Any

from autogen_agentchat.agents import BaseChatAgent
from autogen_agentchat.base import Response
from autogen_agentchat.messages import BaseChatMessage, TextMessage
from autogen_core import CancellationToken

from autogen_capacity import AgentCapacity, CapacityAwareGroupChat, InMemoryLedger

from ._agents import RateLimitError
from .cascade import _quiet_runtime

__all__ = ["TARGETS", "VirtualTimeLoop", "run"]

TARGETS = {"throttled_per_turn_max": 0.05, "calls_per_turn_max": 1.05, "goodput_vs_exact_min": 0.90}
TRUE_LIMIT = 3
RISEN, DROPPED = 6, 2
TURNS = 4


class _VirtualSelector:
    """A selector that never sleeps: with nothing to read, it moves the loop's clock to its next timer."""

    def __init__(self, real: selectors.BaseSelector, loop: VirtualTimeLoop) -> None:
        self._real = real
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events = self._real.select(0)
        if events or timeout == 0:
            return events
        if timeout is None:  # no timer at all: only I/O can wake the loop
            return self._real.select(None)
        self._loop.now += timeout
        return []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose ``time()`` is simulated: it advances only while the loop would otherwise wait."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self._selector = _VirtualSelector(self._selector, self)  # type: ignore[has-type]

    def time(self) -> float:
        return self.now


class _Provider:
    """A model deployment with a true concurrency limit that may change; counts what it answered."""

    def __init__(self, limit: int, seed: int) -> None:
        self.limit = limit
        self.in_service = 0
        self.calls = self.throttled = self.served = 0
        self.throttled_at: list[float] = []
        self._rng = random.Random(seed)

    async def call(self) -> None:
        loop = asyncio.get_running_loop()
        self.calls += 1
        if self.in_service >= self.limit:
            self.throttled += 1
            self.throttled_at.append(loop.time())
            raise RateLimitError("model", "1")
        self.in_service += 1
        try:
            await asyncio.sleep(self._rng.lognormvariate(0.0, 0.3))
        finally:
            self.in_service -= 1
        self.served += 1


class _ModelAgent(BaseChatAgent):
    def __init__(self, provider: _Provider) -> None:
        super().__init__("model", description="Calls the simulated provider once a turn.")
        self._provider = provider

    @property
    def produced_message_types(self) -> Sequence[type[BaseChatMessage]]:
        return (TextMessage,)

    async def on_messages(self, messages: Sequence[BaseChatMessage], cancellation_token: CancellationToken) -> Response:
        await self._provider.call()
        return Response(chat_message=TextMessage(content="ok", source=self.name))

    async def on_reset(self, cancellation_token: CancellationToken) -> None:
        pass


def _contract(max_concurrent: int, adaptive: bool) -> AgentCapacity:
    return AgentCapacity(
        max_concurrent=max_concurrent,
        adaptive=adaptive,
        key="model",
        backoff_initial_ms=250,
        backoff_ceiling_ms=2000,
        max_caller_retries=10_000,
        max_retry_after_ms=10_000,
    )


async def _arm(contract: AgentCapacity, k: int, seconds: float, seed: int) -> dict[str, Any]:
    """K workers running teams back to back for ``seconds``; then, for the adaptive arm, the limit's shifts."""
    loop = asyncio.get_running_loop()
    provider = _Provider(TRUE_LIMIT, seed)
    ledger = InMemoryLedger()
    stop_at = loop.time() + seconds
    live: list[tuple[float, int]] = []

    async def worker() -> None:
        while loop.time() < stop_at:
            team = CapacityAwareGroupChat(
                [_ModelAgent(provider)], capacities={"model": contract}, ledger=ledger, max_turns=TURNS
            )
            await team.run(task="go")

    async def watch() -> None:
        while loop.time() < stop_at:
            usage = (await ledger.snapshot()).get("model")
            if usage is not None and usage.live_limit is not None:
                live.append((loop.time(), usage.live_limit))
            await asyncio.sleep(0.5)

    async def shifts() -> None:
        await asyncio.sleep(seconds * 0.5)
        provider.limit = RISEN
        await asyncio.sleep(seconds * 0.25)
        provider.limit = DROPPED

    started = loop.time()
    tasks = [asyncio.ensure_future(worker()) for _ in range(k)]
    watcher = asyncio.ensure_future(watch())
    shifter = asyncio.ensure_future(shifts()) if contract.adaptive else None
    first_half = seconds * 0.5 if contract.adaptive else seconds
    await asyncio.sleep(first_half)
    burst = {"turns": provider.served, "calls": provider.calls, "throttled": provider.throttled}
    await asyncio.gather(*tasks, watcher)
    if shifter is not None:
        await shifter
    await ledger.aclose()
    row: dict[str, Any] = {
        "declared": contract.max_concurrent,
        "adaptive": contract.adaptive,
        "turns": burst["turns"],
        "goodput_turns_s": burst["turns"] / first_half,
        "throttled_per_turn": burst["throttled"] / max(burst["turns"], 1),
        "calls_per_turn": burst["calls"] / max(burst["turns"], 1),
    }
    if contract.adaptive:
        rise_at, drop_at = started + seconds * 0.5, started + seconds * 0.75
        reached = next((t for t, limit in live if t >= rise_at and limit >= RISEN - 1), None)
        row["rise_to_5_s"] = None if reached is None else reached - rise_at
        after = [t for t in provider.throttled_at if t >= drop_at]
        row["drop_429s_stop_s"] = _burst_end(after, quiet_s=5.0) - drop_at if after else 0.0
        row["live_limit_end"] = live[-1][1] if live else None
    return row


def _burst_end(times: list[float], quiet_s: float) -> float:
    """The last 429 before the first gap of ``quiet_s`` seconds without one (later ones are single probes)."""
    end = times[0]
    for t in times[1:]:
        if t - end >= quiet_s:
            break
        end = t
    return end


async def _all(quick: bool) -> dict[str, Any]:
    seconds, k = (120.0, 8) if quick else (600.0, 24)
    with _quiet_runtime():
        adaptive = await _arm(_contract(8, adaptive=True), k, seconds, seed=1)
        exact = await _arm(_contract(TRUE_LIMIT, adaptive=False), k, seconds / 2, seed=1)
        static = await _arm(_contract(8, adaptive=False), k, seconds / 2, seed=1)
    adaptive["goodput_vs_exact"] = adaptive["goodput_turns_s"] / exact["goodput_turns_s"]
    adaptive["targets"] = {
        "429s <= 5% of turns": adaptive["throttled_per_turn"] <= TARGETS["throttled_per_turn_max"],
        "calls per turn <= 1.05": adaptive["calls_per_turn"] <= TARGETS["calls_per_turn_max"],
        "goodput >= 0.90 of exact": adaptive["goodput_vs_exact"] >= TARGETS["goodput_vs_exact_min"],
        "limit 3 -> 6: live >= 5 within 30 s": adaptive["rise_to_5_s"] is not None and adaptive["rise_to_5_s"] <= 30,
        "limit 6 -> 2: 429s stop within 5 s": adaptive["drop_429s_stop_s"] <= 5,
    }
    return {"targets": TARGETS, "k": k, "seconds": seconds, "results": [adaptive, exact, static]}


async def run(quick: bool) -> dict[str, Any]:
    """The three arms on a virtual-time loop of their own (in a worker thread)."""

    def simulate() -> dict[str, Any]:
        loop = VirtualTimeLoop()
        try:
            return loop.run_until_complete(_all(quick))
        finally:
            loop.close()

    return await asyncio.to_thread(simulate)
