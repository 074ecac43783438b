"""Agents and the simulated backend the scenarios run against."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from autogen_agentchat.agents import BaseChatAgent
from autogen_agentchat.base import Response
from autogen_agentchat.messages import BaseChatMessage, TextMessage
from autogen_core import CancellationToken

from autogen_capacity import KeyStatus, Lease

__all__ = ["Backend", "BackendAgent", "RateLimitError", "SlotClock", "TrivialAgent", "timed"]


class SlotClock:
    """How many slots are in use over time: integrates a count that changes at given instants."""

    def __init__(self) -> None:
        self.changes: list[tuple[float, int]] = []

    def change(self, at: float, delta: int) -> None:
        self.changes.append((at, delta))

    def slot_seconds(self, start: float, end: float) -> float:
        """The integral of the count over ``[start, end]``."""
        total, level, last = 0.0, 0, start
        for at, delta in sorted(self.changes):
            if at > end:
                break
            if at > start:
                total += level * (at - last)
                last = at
            level += delta
        return total + level * (end - last)


def timed(lease: Lease | KeyStatus, clock: SlotClock) -> Lease | KeyStatus:
    """``lease`` counted on ``clock`` from now until it is released (a refusal's status stays as it is)."""
    if not isinstance(lease, Lease):
        return lease
    loop = asyncio.get_running_loop()
    clock.change(loop.time(), +1)

    async def release(_: Lease) -> None:
        clock.change(loop.time(), -1)
        await lease.release()

    return Lease(lease.key, lease.lease_id, lease.acquired_at, release)


class TrivialAgent(BaseChatAgent):
    """Answers at once with a fixed text: the cheapest possible participant."""

    def __init__(self, name: str) -> None:
        super().__init__(name, description=f"Trivial agent {name}.")

    @property
    def produced_message_types(self) -> Sequence[type[BaseChatMessage]]:
        return (TextMessage,)

    async def on_messages(self, messages: Sequence[BaseChatMessage], cancellation_token: CancellationToken) -> Response:
        return Response(chat_message=TextMessage(content="ok", source=self.name))

    async def on_reset(self, cancellation_token: CancellationToken) -> None:
        pass


class _Response:
    """The part of an httpx response an SDK error carries: headers."""

    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers


class RateLimitError(Exception):
    """Shaped like an SDK's 429 (openai.RateLimitError): ``status_code`` and ``response.headers``."""

    def __init__(self, member: str, retry_after: str) -> None:
        super().__init__(f"429 Too Many Requests from {member}")
        self.status_code = 429
        self.response = _Response({"Retry-After": retry_after})


class Backend:
    """A shared service with a true concurrency limit per member: a call beyond it is refused with a 429.

    Counts every attempt, every 429, completed services per member and the peak of concurrent requests
    (admitted or not) per member.
    """

    def __init__(self, limits: dict[str, int], service_s: float, retry_after: str = "0.05") -> None:
        self.limits = limits
        self.service_s = service_s
        self.retry_after = retry_after
        self.in_flight = dict.fromkeys(limits, 0)
        self.peak = dict.fromkeys(limits, 0)
        self.attempts = 0
        self.rejected = 0
        self.served = dict.fromkeys(limits, 0)
        self.busy_s = 0.0
        """Seconds spent serving admitted requests (the real service time, loop latency included)."""
        self.serving = SlotClock()
        """Requests in service over time (for the slot-time accounting)."""

    async def call(self, member: str) -> None:
        """Serve one request for ``member`` in ``service_s`` seconds, or raise a 429 at once."""
        self.attempts += 1
        now = self.in_flight[member] + 1
        self.peak[member] = max(self.peak[member], now)
        if now > self.limits[member]:
            self.rejected += 1
            raise RateLimitError(member, self.retry_after)
        self.in_flight[member] = now
        loop = asyncio.get_running_loop()
        started = loop.time()
        self.serving.change(started, +1)
        try:
            await asyncio.sleep(self.service_s)
        finally:
            self.in_flight[member] -= 1
            ended = loop.time()
            self.serving.change(ended, -1)
            self.busy_s += ended - started
        self.served[member] += 1


class BackendAgent(BaseChatAgent):
    """A member whose every turn is one call to the shared backend; it records when its turns complete."""

    def __init__(self, name: str, backend: Backend, turns: list[tuple[str, float]]) -> None:
        super().__init__(name, description=f"Backend-served agent {name}.")
        self._backend = backend
        self._turns = turns

    @property
    def produced_message_types(self) -> Sequence[type[BaseChatMessage]]:
        return (TextMessage,)

    async def on_messages(self, messages: Sequence[BaseChatMessage], cancellation_token: CancellationToken) -> Response:
        await self._backend.call(self.name)
        self._turns.append((self.name, asyncio.get_running_loop().time()))
        return Response(chat_message=TextMessage(content="ok", source=self.name))

    async def on_reset(self, cancellation_token: CancellationToken) -> None:
        pass

    async def save_state(self) -> dict[str, Any]:
        return {}

    async def load_state(self, state: Any) -> None:
        pass
