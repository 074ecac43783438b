"""Quickstart: swap RoundRobinGroupChat for CapacityAwareGroupChat and declare each member's contract.

Runs offline: the agents answer from ReplayChatCompletionClient scripts, no API key needed.
"""

from __future__ import annotations

import asyncio

from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.conditions import MaxMessageTermination
from autogen_ext.models.replay import ReplayChatCompletionClient

from autogen_capacity import AgentCapacity, CapacityAwareGroupChat


def make_team() -> CapacityAwareGroupChat:
    writer = AssistantAgent("writer", model_client=ReplayChatCompletionClient(["Draft: capacity is a contract."]))
    editor = AssistantAgent("editor", model_client=ReplayChatCompletionClient(["Edit: say who declares it."]))
    # Before: RoundRobinGroupChat([writer, editor], termination_condition=MaxMessageTermination(3))
    return CapacityAwareGroupChat(
        [writer, editor],
        capacities={
            # The writer's deployment takes 3 requests at once and 60 a minute; callers back off 1 s, 2 s, 4 s...
            "writer": AgentCapacity(max_concurrent=3, rpm=60, backoff_initial_ms=1000, max_caller_retries=5),
            "editor": AgentCapacity(max_concurrent=1, backoff_strategy="constant", backoff_initial_ms=500),
        },
        routing="round_robin",  # every member speaks in turn, as in RoundRobinGroupChat
        termination_condition=MaxMessageTermination(3),
    )


async def main() -> None:
    team = make_team()
    result = await team.run(task="Explain capacity contracts in one line.")
    for message in result.messages:
        print(f"{message.source}: {message.to_text()}")
    print("stop reason:", result.stop_reason)
    print("writer's contract:", team.capacity_of("writer"))
    print("the team's own contract (pipeline of its members):", team.capacity)
    usage = await team.ledger.snapshot()
    print("leases in flight after the run:", {key: u.in_flight for key, u in usage.items()})


if __name__ == "__main__":
    asyncio.run(main())
