"""Scripted agents shared by the team tests."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from autogen_agentchat.agents import BaseChatAgent
from autogen_agentchat.base import Response
from autogen_agentchat.messages import BaseChatMessage, TextMessage
from autogen_core import CancellationToken
from autogen_core.models import RequestUsage

from autogen_capacity import AgentCapacity


class ConcurrencyProbe:
    """Counts turns in progress across agents, independently of any ledger."""

    def __init__(self) -> None:
        self.now: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.turns: dict[str, int] = {}
        self.entered = asyncio.Event()
        """Set once any turn has started."""

    def enter(self, key: str) -> None:
        self.now[key] = self.now.get(key, 0) + 1
        self.peak[key] = max(self.peak.get(key, 0), self.now[key])
        self.turns[key] = self.turns.get(key, 0) + 1
        self.entered.set()

    def leave(self, key: str) -> None:
        self.now[key] -= 1


class WorkerAgent(BaseChatAgent):
    """Answers after ``delay`` seconds (0: at once), recording its concurrency on ``probe`` under ``key``."""

    def __init__(
        self,
        name: str,
        *,
        probe: ConcurrencyProbe | None = None,
        key: str | None = None,
        delay: float = 0.0,
        tokens: int = 0,
        capacity: AgentCapacity | None = None,
        gate: asyncio.Event | None = None,
    ) -> None:
        super().__init__(name, description=f"Worker {name}.")
        self._probe = probe
        self._key = key or name
        self._delay = delay
        self._tokens = tokens
        self._gate = gate
        self.received: list[str] = []
        self.calls = 0
        if capacity is not None:
            self.capacity = capacity

    @property
    def produced_message_types(self) -> Sequence[type[BaseChatMessage]]:
        return (TextMessage,)

    async def on_messages(self, messages: Sequence[BaseChatMessage], cancellation_token: CancellationToken) -> Response:
        self.calls += 1
        self.received.extend(m.to_text() for m in messages)
        if self._probe is not None:
            self._probe.enter(self._key)
        try:
            if self._gate is not None:
                await self._gate.wait()
            if self._delay:
                await asyncio.sleep(self._delay)
        finally:
            if self._probe is not None:
                self._probe.leave(self._key)
        usage = RequestUsage(prompt_tokens=self._tokens, completion_tokens=0) if self._tokens else None
        return Response(
            chat_message=TextMessage(content=f"{self.name} #{self.calls}", source=self.name, models_usage=usage)
        )

    async def on_reset(self, cancellation_token: CancellationToken) -> None:
        self.calls = 0
