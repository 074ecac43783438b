"""Team component configs as JSON data, written by hand the way a reviewer reads them."""

from __future__ import annotations

from typing import Any

TEAM = "autogen_capacity.CapacityAwareGroupChat"
ROUND_ROBIN = "autogen_agentchat.teams.RoundRobinGroupChat"


def agent(name: str) -> dict[str, Any]:
    """An AssistantAgent's component config (never instantiated by the audit)."""
    return {
        "provider": "autogen_agentchat.agents.AssistantAgent",
        "component_type": "agent",
        "config": {
            "name": name,
            "description": f"Agent {name}.",
            "reflect_on_tool_use": False,
            "tool_call_summary_format": "{result}",
            "model_client": {
                "provider": "autogen_ext.models.replay.ReplayChatCompletionClient",
                "component_type": "replay_chat_completion_client",
                "config": {"chat_completions": [f"{name} says hi"] * 5},
            },
        },
    }


def team(
    name: str,
    participants: list[dict[str, Any]],
    *,
    provider: str = TEAM,
    capacity: dict[str, Any] | None = None,
    capacities: dict[str, Any] | None = None,
    timeout_s: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A team's component config; ``timeout_s`` adds ``MaxMessageTermination(3) | TimeoutTermination``."""
    config: dict[str, Any] = {"name": name, "participants": participants, **extra}
    if capacity is not None:
        config["capacity"] = capacity
    if capacities is not None:
        config["capacities"] = capacities
    if timeout_s is not None:
        config["termination_condition"] = {
            "provider": "autogen_agentchat.base.OrTerminationCondition",
            "component_type": "termination",
            "config": {
                "conditions": [
                    {
                        "provider": "autogen_agentchat.conditions.MaxMessageTermination",
                        "component_type": "termination",
                        "config": {"max_messages": 3},
                    },
                    {
                        "provider": "autogen_agentchat.conditions.TimeoutTermination",
                        "component_type": "termination",
                        "config": {"timeout_seconds": timeout_s},
                    },
                ]
            },
        }
    return {"provider": provider, "component_type": "team", "config": config}


def sound() -> dict[str, Any]:
    """A pool of three members (4, 2 and 1 slots) capped at 5 by the team: no findings."""
    return team(
        "pool",
        [agent("alpha"), agent("beta"), agent("gamma")],
        capacity={"max_concurrent": 5},
        capacities={
            "alpha": {"max_concurrent": 4, "rpm": 120},
            "beta": {"max_concurrent": 2, "rpm": 60},
            "gamma": {"max_concurrent": 1, "rpm": 30, "backoff_strategy": "constant", "backoff_initial_ms": 500},
        },
    )
