"""The selector's own model calls under a contract, and the warning about clients that retry on their own."""

from __future__ import annotations

import asyncio

from autogen_ext.models.replay import ReplayChatCompletionClient

from agents import WorkerAgent
from autogen_capacity import AgentCapacity, CapacityAwareGroupChat, InMemoryLedger


async def test_selector_calls_are_leased_under_selector_capacity() -> None:
    """Each selection call takes and releases a lease on the selector's key."""
    ledger = InMemoryLedger()
    selector = ReplayChatCompletionClient(["b", "a", "b"])
    team = CapacityAwareGroupChat(
        [WorkerAgent("a"), WorkerAgent("b"), WorkerAgent("c")],
        selector,
        name="picky",
        selector_capacity=AgentCapacity(max_concurrent=1),
        ledger=ledger,
        max_turns=3,
    )
    result = await asyncio.wait_for(team.run(task="go"), 30)
    assert [m.source for m in result.messages] == ["user", "b", "a", "b"]
    usage = (await ledger.snapshot())["picky.selector"]
    assert (usage.acquired, usage.in_flight) == (3, 0)
