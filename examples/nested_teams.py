"""Nesting: a CapacityAwareGroupChat that serves one run at a time, inside a parent CapacityAwareGroupChat.

The inner team enforces its own contract (one lease on its key per run); the parent ranks it by headroom
but takes no second lease on the same key, so max_concurrent=1 cannot deadlock. Three parent runs at
once share the inner team's key through the default ledger: they take turns, and all finish.
"""

from __future__ import annotations

import asyncio

from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.conditions import MaxMessageTermination, SourceMatchTermination
from autogen_ext.models.replay import ReplayChatCompletionClient

from autogen_capacity import AgentCapacity, CapacityAwareGroupChat


def agent(name: str, reply: str) -> AssistantAgent:
    return AssistantAgent(name, model_client=ReplayChatCompletionClient([reply] * 10))


def make_parent(run: int) -> CapacityAwareGroupChat:
    reviewers = CapacityAwareGroupChat(
        [agent("checker", f"checked #{run}"), agent("approver", f"approved #{run}")],
        name="reviewers",
        capacity=AgentCapacity(max_concurrent=1, backoff_initial_ms=200, max_caller_retries=10),
        routing="round_robin",
        termination_condition=SourceMatchTermination(["approver"]),
    )
    return CapacityAwareGroupChat(
        [agent("planner", f"plan #{run}"), reviewers],
        name="parent",
        routing="round_robin",
        termination_condition=MaxMessageTermination(4),
    )


async def main() -> None:
    parents = [make_parent(run) for run in range(3)]
    print("reviewers' contract as a member of the parent:", parents[0].capacity_of("reviewers"))
    results = await asyncio.wait_for(asyncio.gather(*(p.run(task="Ship it?") for p in parents)), timeout=30)
    for run, result in enumerate(results):
        print(f"run {run}: {' | '.join(m.to_text() for m in result.messages[1:])}  ({result.stop_reason})")
    usage = await parents[0].ledger.snapshot()
    print("reviewers' runs admitted:", usage["reviewers"].acquired, "in flight now:", usage["reviewers"].in_flight)


if __name__ == "__main__":
    asyncio.run(main())
