"""Building the contestants: AutoGen's teams and ours, over the same participants."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

from autogen_agentchat.base import ChatAgent, Team
from autogen_agentchat.messages import BaseAgentEvent, BaseChatMessage
from autogen_agentchat.teams import RoundRobinGroupChat, SelectorGroupChat
from autogen_ext.models.replay import ReplayChatCompletionClient

from autogen_capacity import AgentCapacity, CapacityAwareGroupChat, InMemoryLedger
from autogen_capacity.routing import Routing

__all__ = ["CONTESTANTS", "build_team", "rotating_selector"]

CONTESTANTS = ("round_robin", "selector", "ours_round_robin", "ours_headroom")
"""AutoGen's RoundRobinGroupChat, SelectorGroupChat (selector_func), and CapacityAwareGroupChat (two routings)."""


def rotating_selector(names: Sequence[str]) -> Callable[[Sequence[BaseAgentEvent | BaseChatMessage]], str]:
    """A ``selector_func`` that picks members in turn, never asking the model."""
    cycle = itertools.cycle(list(names))

    def select(thread: Sequence[BaseAgentEvent | BaseChatMessage]) -> str:
        return next(cycle)

    return select


def build_team(
    kind: str,
    participants: Sequence[ChatAgent | Team],
    *,
    max_turns: int,
    capacities: dict[str, AgentCapacity] | None = None,
    ledger: InMemoryLedger | None = None,
    selector_func: Callable[[Sequence[BaseAgentEvent | BaseChatMessage]], str | None] | None = None,
) -> Team:
    """One contestant: ``round_robin``, ``selector``, ``ours_round_robin`` or ``ours_headroom``."""
    members = list(participants)
    if kind == "round_robin":
        return RoundRobinGroupChat(members, max_turns=max_turns)
    if kind == "selector":
        return SelectorGroupChat(
            members,
            model_client=ReplayChatCompletionClient([]),  # never called: selector_func always answers
            selector_func=selector_func or rotating_selector([m.name for m in members]),
            allow_repeated_speaker=True,
            max_turns=max_turns,
        )
    routing: Routing = "round_robin" if kind == "ours_round_robin" else "headroom"
    return CapacityAwareGroupChat(
        members, capacities=capacities, routing=routing, ledger=ledger or InMemoryLedger(), max_turns=max_turns
    )
