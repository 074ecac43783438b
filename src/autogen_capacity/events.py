"""Typed AgentChat events a capacity-aware team emits in ``run_stream`` (with ``emit_team_events=True``).

Every event here is also logged as a structlog event (``autogen_capacity.*``). A plain AutoGen team with a
capacity-aware child lists :data:`CAPACITY_EVENT_TYPES` in its ``custom_message_types`` to see them in its own
stream; without them, the child keeps them out of the parent's stream (a parent would refuse them) and warns
once with a :class:`~autogen_capacity.CapacityConfigWarning`.
"""

from __future__ import annotations

from typing import Literal

from autogen_agentchat.messages import BaseAgentEvent
from pydantic import BaseModel

__all__ = [
    "CAPACITY_EVENT_TYPES",
    "CapacityDeferredEvent",
    "CapacityExhaustedEvent",
    "CapacityWaitEvent",
    "Deferral",
    "LiveLimitChangedEvent",
    "MemberOverloadedEvent",
]


class Deferral(BaseModel):
    """One candidate passed over for lack of headroom."""

    name: str
    """The participant passed over."""
    key: str
    """The ledger key it is tracked under."""
    reason: str
    """``slots``, ``rate``, ``tpm``, ``cooldown``, ``exhausted`` or ``team`` (a nested team without headroom)."""


class CapacityDeferredEvent(BaseAgentEvent):
    """Candidates were passed over because they had no headroom; ``speaker`` spoke instead (``None``: the
    team waits)."""

    content: list[Deferral]
    """Who was passed over, and why."""
    speaker: str | None = None
    """Who takes the turn instead."""
    type: Literal["CapacityDeferredEvent"] = "CapacityDeferredEvent"

    def to_text(self) -> str:
        deferred = ", ".join(f"{d.name} ({d.reason})" for d in self.content)
        instead = f"; {self.speaker} speaks instead" if self.speaker else "; nobody has headroom"
        return f"Deferred {deferred}{instead}"


class CapacityWaitEvent(BaseAgentEvent):
    """Nobody could take the turn: the team waits for a cooldown's end, or by the preferred candidate's backoff
    schedule."""

    content: list[str]
    """The candidates waited for."""
    attempt: int
    """Backoff: the retry this wait spends if it ends without admission (1-based). Cooldown: the retries spent
    so far (a wait for the provider's word spends none)."""
    max_retries: int
    """The contract's ``max_caller_retries``."""
    delay_s: float
    """The longest this wait lasts, in seconds (it ends sooner on a release or refill)."""
    window: Literal["backoff", "cooldown"] = "backoff"
    """``cooldown``: until the soonest cooldown a provider asked for ends; ``backoff``: the schedule's delay."""
    type: Literal["CapacityWaitEvent"] = "CapacityWaitEvent"

    def to_text(self) -> str:
        if self.window == "cooldown":
            return f"Waiting {self.delay_s:.3f}s for the cooldown of {', '.join(self.content)} to end"
        return (
            f"Waiting up to {self.delay_s:.3f}s for {', '.join(self.content)} (retry {self.attempt}/{self.max_retries})"
        )


class CapacityExhaustedEvent(BaseAgentEvent):
    """No participant could take the turn within its contract: the run ends."""

    content: str
    """Who was exhausted and why (the run's stop reason)."""
    type: Literal["CapacityExhaustedEvent"] = "CapacityExhaustedEvent"

    def to_text(self) -> str:
        return self.content


class MemberOverloadedEvent(BaseAgentEvent):
    """A member signalled overload (429, Retry-After, spent quota); its turn goes to another member."""

    content: str
    """The member's error, as text."""
    member: str
    """The participant that was overloaded."""
    key: str
    """Its ledger key."""
    kind: Literal["throttled", "exhausted"]
    """``throttled``: cooled down and retried later; ``exhausted``: routed around for the rest of the run."""
    cooldown_s: float
    """How long its key is out of routing, in seconds."""
    type: Literal["MemberOverloadedEvent"] = "MemberOverloadedEvent"

    def to_text(self) -> str:
        return f"{self.member} is overloaded ({self.kind}), out of routing for {self.cooldown_s:.3f}s: {self.content}"


class LiveLimitChangedEvent(BaseAgentEvent):
    """A member's answer moved its adaptive key's live concurrency limit (``AgentCapacity(adaptive=True)``)."""

    content: str
    """Why: ``throttled``, ``probe_failed``, ``latency``, ``probe`` or ``ceiling`` (see ``docs/adaptive.md``)."""
    member: str
    """The participant whose answer moved it."""
    key: str
    """Its ledger key."""
    old: int
    new: int
    ceiling: int
    """The contract's ``max_concurrent``: the live limit is never above it."""
    type: Literal["LiveLimitChangedEvent"] = "LiveLimitChangedEvent"

    def to_text(self) -> str:
        return f"{self.key}'s live limit {self.old} -> {self.new} (ceiling {self.ceiling}): {self.content}"


CAPACITY_EVENT_TYPES: tuple[type[BaseAgentEvent], ...] = (
    CapacityDeferredEvent,
    CapacityWaitEvent,
    CapacityExhaustedEvent,
    MemberOverloadedEvent,
    LiveLimitChangedEvent,
)
"""Every event type a capacity-aware team may emit, for a parent team's ``custom_message_types``."""
