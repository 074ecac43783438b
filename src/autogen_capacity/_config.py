"""The declarative (JSON) configuration of CapacityAwareGroupChat: contracts live here, reviewable."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from autogen_agentchat.base import ChatAgent, Team, TerminationCondition
from autogen_core import ComponentBase, ComponentModel
from autogen_core.model_context import ChatCompletionContext
from autogen_core.models import ChatCompletionClient
from pydantic import BaseModel, ConfigDict, Field

from ._plan import DEFAULT_EXHAUSTED_TTL_S
from .contracts import AgentCapacity, RetryBudget
from .ledger.config import LedgerConfig, ledger_config_of
from .priority import Priority

if TYPE_CHECKING:
    from ._team import CapacityAwareGroupChat
from .routing import Routing

__all__ = ["CapacityArguments", "CapacityAwareGroupChatConfig", "load_team_config"]


class CapacityArguments(BaseModel):
    """The capacity arguments of the team: the one set of rules that both the constructor and the config
    validate with (the constructor validates its arguments with this model, the config inherits it)."""

    model_config = ConfigDict(extra="forbid", title="CapacityAwareGroupChat")

    capacity: AgentCapacity | None = None
    """The team's own contract."""
    capacities: dict[str, AgentCapacity] = Field(default_factory=dict)
    """Member contracts keyed by participant name."""
    routing: Routing | None = None
    on_exhausted: Literal["stop", "raise"] = "stop"
    retry_budget: RetryBudget | None = None
    selector_capacity: AgentCapacity | None = None
    exhausted_ttl_s: float = Field(default=DEFAULT_EXHAUSTED_TTL_S, gt=0)
    max_selector_attempts: int = Field(default=3, ge=1)
    priority: Priority = "default"
    """The team's class in the keys' waiting lines under overload: ``critical``, ``default`` or ``sheddable``."""
    deadline_s: float | None = Field(default=None, gt=0)
    """Seconds a run may last, counted from its start (a ``TimeoutTermination`` sets one too; the smaller wins)."""


class CapacityAwareGroupChatConfig(CapacityArguments):
    """The declarative configuration of :class:`~autogen_capacity.CapacityAwareGroupChat`.

    ``selector_func``, ``candidate_func``, ``overload_classifier`` and ``runtime`` objects are not
    serialized (as in SelectorGroupChat); a ``ledger`` object only when it can be named by a
    :class:`~autogen_capacity.LedgerConfig` (never by its URL).
    """

    model_config = ConfigDict(extra="forbid", title="CapacityAwareGroupChatConfig")

    name: str | None = None
    description: str | None = None
    participants: list[ComponentModel]
    model_client: ComponentModel | None = None
    termination_condition: ComponentModel | None = None
    max_turns: int | None = None
    emit_team_events: bool = False
    selector_prompt: str | None = None
    allow_repeated_speaker: bool | None = None
    model_client_streaming: bool = False
    model_context: ComponentModel | None = None
    ledger: LedgerConfig | None = None
    """The ledger to record usage in; ``None``: the in-process default ledger."""


def load_team_config(config: CapacityAwareGroupChatConfig, default_prompt: str) -> dict[str, Any]:
    """The constructor arguments that rebuild a team from ``config``."""
    participants: list[ChatAgent | Team] = [
        Team.load_component(p) if p.component_type == Team.component_type else ChatAgent.load_component(p)
        for p in config.participants
    ]
    return {
        "participants": participants,
        "model_client": ChatCompletionClient.load_component(config.model_client) if config.model_client else None,
        "name": config.name,
        "description": config.description,
        "capacity": config.capacity,
        "capacities": config.capacities,
        "routing": config.routing,
        "on_exhausted": config.on_exhausted,
        "retry_budget": config.retry_budget,
        "selector_capacity": config.selector_capacity,
        "exhausted_ttl_s": config.exhausted_ttl_s,
        "selector_prompt": config.selector_prompt or default_prompt,
        "allow_repeated_speaker": config.allow_repeated_speaker,
        "max_selector_attempts": config.max_selector_attempts,
        "priority": config.priority,
        "deadline_s": config.deadline_s,
        "model_client_streaming": config.model_client_streaming,
        "model_context": (ChatCompletionContext.load_component(config.model_context) if config.model_context else None),
        "termination_condition": (
            TerminationCondition.load_component(config.termination_condition) if config.termination_condition else None
        ),
        "max_turns": config.max_turns,
        "emit_team_events": config.emit_team_events,
    }


def team_config(team: CapacityAwareGroupChat, default_prompt: str) -> CapacityAwareGroupChatConfig:
    """The component config of ``team``: what :func:`load_team_config` rebuilds it from."""

    def dump(component: ComponentBase[BaseModel] | None) -> ComponentModel | None:
        return component.dump_component() if component is not None else None

    return CapacityAwareGroupChatConfig(
        name=team._name,
        description=team._description,
        participants=[participant.dump_component() for participant in team._participants],
        model_client=dump(team._model_client),
        termination_condition=dump(team._termination_condition),
        max_turns=team._max_turns,
        emit_team_events=team._emit_team_events,
        capacity=team._declared_capacity,
        capacities=team._capacities,
        routing=team._routing,
        on_exhausted=team._on_exhausted,
        retry_budget=team._retry_budget,
        selector_capacity=team._selector_capacity,
        exhausted_ttl_s=team._exhausted_ttl_s,
        selector_prompt=None if team._selector_prompt == default_prompt else team._selector_prompt,
        allow_repeated_speaker=team._allow_repeated_speaker,
        max_selector_attempts=team._max_selector_attempts,
        priority=team._priority,
        deadline_s=team._deadline_s,
        model_client_streaming=team._model_client_streaming,
        model_context=dump(team._model_context),
        ledger=team._ledger_config if team._ledger_given is None else ledger_config_of(team._ledger_given),
    )
