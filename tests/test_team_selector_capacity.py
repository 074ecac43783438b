"""The selector's own model calls under a contract, and the warning about clients that retry on their own."""

from __future__ import annotations

import asyncio
import logging

import pytest
from autogen_agentchat.agents import AssistantAgent
from autogen_ext.models.openai import OpenAIChatCompletionClient
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


def test_member_client_with_its_own_retries_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    """A member whose OpenAI client retries by itself is logged, since its retries multiply the team's."""
    client = OpenAIChatCompletionClient(model="gpt-4o", api_key="sk-test", max_retries=3)
    member = AssistantAgent("writer", model_client=client)
    with caplog.at_level(logging.WARNING, logger="autogen_capacity"):
        CapacityAwareGroupChat([member])
    assert any(
        "autogen_capacity.client_retries" in r.getMessage() and "writer" in r.getMessage() for r in caplog.records
    )
