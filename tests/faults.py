"""Fault-injecting members and run bookkeeping shared by the reliability, soak and Redis fault tests."""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from autogen_agentchat.agents import BaseChatAgent
from autogen_agentchat.base import Response, TaskResult
from autogen_agentchat.messages import BaseChatMessage, TextMessage
from autogen_core import CancellationToken
from autogen_core.models import CreateResult
from autogen_ext.models.replay import ReplayChatCompletionClient

from agents import ConcurrencyProbe
from autogen_capacity import AgentCapacity, Overloaded

Fault = Literal["error", "429", "overloaded", "quota", "slow"]
FAULTS: tuple[Fault, ...] = ("error", "429", "overloaded", "quota", "slow")
QUICK: dict[str, Any] = {"backoff_initial_ms": 1, "backoff_ceiling_ms": 5, "backoff_jitter": False}
BOOM = "boom"
"""Every ordinary error a member raises carries this word, so a RuntimeError can be traced to one."""


class RateLimitError(Exception):
    """Shaped like an SDK's HTTP error: ``status_code``, ``response.headers`` and an error ``body``."""

    def __init__(self, status_code: int = 429, headers: dict[str, str] | None = None, body: Any = None) -> None:
        super().__init__(f"Error code: {status_code}")
        self.status_code = status_code
        self.response = type("Resp", (), {"status_code": status_code, "headers": headers or {}})()
        self.body = body


def quota_error() -> RateLimitError:
    """OpenAI's spent quota: a 429 whose body says ``insufficient_quota`` (exhausted, never retried)."""
    return RateLimitError(429, body={"error": {"code": "insufficient_quota", "type": "insufficient_quota"}})


class FlakyReplayClient(ReplayChatCompletionClient):
    """A replay client whose first calls raise the given errors; records what each answered call saw."""

    def __init__(self, responses: list[str], failures: Sequence[BaseException]) -> None:
        super().__init__(responses)
        self._failures = list(failures)
        self.seen: list[list[Any]] = []

    async def create(self, messages: Sequence[Any], **kwargs: Any) -> CreateResult:
        if self._failures:
            raise self._failures.pop(0)
        self.seen.append(list(messages))
        return await super().create(messages, **kwargs)


class FaultyMember(BaseChatAgent):
    """A scripted member that answers after ``delay`` seconds, or fails with the next queued fault (or, with
    ``fault_rate``, a random one). Records its concurrency on ``probe`` under ``key`` (independently of any
    ledger) and every reply it returned, so a test can check nothing it said was lost."""

    def __init__(
        self,
        name: str,
        *,
        probe: ConcurrencyProbe,
        key: str | None = None,
        delay: float = 0.0,
        rng: random.Random | None = None,
        fault_rate: float = 0.0,
        also: tuple[str, ...] = (),
        gate: asyncio.Event | None = None,
    ) -> None:
        super().__init__(name, description=f"Member {name}.")
        self.probe = probe
        self.key = key or name
        self.delay = delay
        self.rng = rng
        self.fault_rate = fault_rate
        self.also = also
        """Further probe keys this member's turns count under (the nested team it belongs to)."""
        self.gate = gate
        """When given, each turn waits for it (after it started counting on the probe)."""
        self.active = 0
        """Turns of this member in progress now."""
        self.at_gate = 0
        """Turns of this member held at ``gate`` now (they cannot end until it opens)."""
        self.faults: deque[Fault] = deque()
        self.replies: list[str] = []
        self.injected: list[Fault] = []
        self.calls = 0

    @property
    def produced_message_types(self) -> Sequence[type[BaseChatMessage]]:
        return (TextMessage,)

    def _next_fault(self) -> Fault | None:
        if self.faults:
            return self.faults.popleft()
        if self.rng is not None and self.fault_rate and self.rng.random() < self.fault_rate:
            return self.rng.choice(FAULTS)
        return None

    async def on_messages(self, messages: Sequence[BaseChatMessage], cancellation_token: CancellationToken) -> Response:
        self.calls += 1
        fault = self._next_fault()
        if fault is not None:
            self.injected.append(fault)
        for key in (self.key, *self.also):
            self.probe.enter(key)
        self.active += 1
        try:
            if self.gate is not None and not self.gate.is_set():
                self.at_gate += 1
                try:
                    await self.gate.wait()
                finally:
                    self.at_gate -= 1
            if self.delay:
                await asyncio.sleep(self.delay)
            if fault == "slow":
                await asyncio.sleep(0.02)
            elif fault == "error":
                raise ValueError(f"{BOOM} from {self.name}")
            elif fault == "429":
                raise RateLimitError(429, headers={"retry-after-ms": "2"})
            elif fault == "overloaded":
                raise Overloaded("busy", retry_after=0.002)
            elif fault == "quota":
                raise quota_error()
        finally:
            self.active -= 1
            for key in (self.key, *self.also):
                self.probe.leave(key)
        text = f"{self.name} reply {self.calls}"
        self.replies.append(text)
        return Response(chat_message=TextMessage(content=text, source=self.name))

    async def on_reset(self, cancellation_token: CancellationToken) -> None:
        pass


Outcome = Literal["result", "cancelled", "error"]


@dataclass
class RunRecord:
    """One run: its task, its token, the members' reply counts when it started, and how it ended."""

    task: asyncio.Task[TaskResult]
    token: CancellationToken
    members: list[FaultyMember]
    started: dict[int, int] = field(default_factory=dict)
    started_at: float = 0.0
    ended_at: float | None = None

    @classmethod
    def start(
        cls, run: asyncio.Task[TaskResult], token: CancellationToken, members: list[FaultyMember], now: float
    ) -> RunRecord:
        return cls(run, token, members, {id(m): len(m.replies) for m in members}, now)

    def outcome(self) -> Outcome:
        """How the finished run ended; fails the test on anything but a result, a cancellation after the
        token was cancelled, or a RuntimeError carrying a member's ordinary error."""
        assert self.task.done()
        if self.task.cancelled():
            assert self.token.is_cancelled(), "a run was cancelled without its token being cancelled"
            return "cancelled"
        error = self.task.exception()
        if error is not None:
            assert isinstance(error, RuntimeError), f"unexpected {type(error).__name__}: {error}"
            assert BOOM in str(error), f"a RuntimeError that no member raised: {error}"
            return "error"
        result = self.task.result()
        assert result.stop_reason, "a run ended without a stop reason"
        texts = {m.to_text() for m in result.messages}
        for member in self.members:
            lost = [r for r in member.replies[self.started[id(member)] :] if r not in texts]
            assert not lost, f"{member.name}'s replies are missing from the TaskResult: {lost}"
        return "result"


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


def contract(max_concurrent: int, retries: int = 3) -> AgentCapacity:
    """A contract with tiny backoffs, no jitter."""
    return AgentCapacity(max_concurrent=max_concurrent, max_caller_retries=retries, **QUICK)
