"""A capacity-aware child inside a plain AutoGen parent: its events never break the parent (issue 16, item 5)."""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import AsyncIterator

import pytest
from autogen_agentchat.agents import SocietyOfMindAgent
from autogen_agentchat.base import TaskResult
from autogen_agentchat.messages import BaseAgentEvent, BaseChatMessage
from autogen_agentchat.teams import RoundRobinGroupChat
from autogen_ext.models.replay import ReplayChatCompletionClient

from agents import WorkerAgent
from autogen_capacity import (
    CAPACITY_EVENT_TYPES,
    AgentCapacity,
    CapacityAwareGroupChat,
    CapacityConfigWarning,
    CapacityDeferredEvent,
    InMemoryLedger,
)
from autogen_capacity.ledger import Lease

TIMEOUT = 30.0
BUSY = AgentCapacity(max_concurrent=1)


@pytest.fixture(name="held")
async def _held(ledger: InMemoryLedger) -> AsyncIterator[Lease]:
    """The child's member ``busy`` saturated for the whole test (as under load), so the child defers it."""
    lease = await ledger.try_acquire("busy", BUSY)
    assert lease is not None
    yield lease
    await lease.release()


def child_team(ledger: InMemoryLedger) -> CapacityAwareGroupChat:
    """A capacity-aware team that reports its deferrals (``emit_team_events=True``), whose first choice is busy."""
    return CapacityAwareGroupChat(
        [WorkerAgent("busy"), WorkerAgent("free")],
        name="child",
        capacities={"busy": BUSY},
        ledger=ledger,
        max_turns=1,
        emit_team_events=True,
    )


async def run(team: RoundRobinGroupChat) -> list[BaseAgentEvent | BaseChatMessage | TaskResult]:
    return await asyncio.wait_for(_collect(team), TIMEOUT)


async def _collect(team: RoundRobinGroupChat) -> list[BaseAgentEvent | BaseChatMessage | TaskResult]:
    return [item async for item in team.run_stream(task="go")]


@pytest.mark.usefixtures("held")
class TestPlainParent:
    async def test_a_deferring_child_does_not_fail_a_plain_parent(
        self, ledger: InMemoryLedger, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The child's first deferral used to end the parent's run with "Message type ... is not registered"; now
        the run completes, the deferral is logged, and a warning at the first run says what to add."""
        parent = RoundRobinGroupChat([child_team(ledger)], max_turns=1)
        with (
            pytest.warns(CapacityConfigWarning, match=r"'child'.*custom_message_types.*CAPACITY_EVENT_TYPES"),
            caplog.at_level(logging.INFO, logger="autogen_capacity"),
        ):
            stream = await run(parent)
        result = stream[-1]
        assert isinstance(result, TaskResult)
        assert "Maximum number of turns" in str(result.stop_reason)
        assert [m.source for m in result.messages if isinstance(m, BaseChatMessage)] == ["user", "free"]
        assert not any(isinstance(m, CAPACITY_EVENT_TYPES) for m in stream)
        assert any("autogen_capacity.deferred" in r.getMessage() for r in caplog.records)

    async def test_a_parent_that_registers_the_events_relays_them_without_a_warning(
        self, ledger: InMemoryLedger
    ) -> None:
        """A plain parent listing CAPACITY_EVENT_TYPES gets the child's events, and nothing is warned."""
        parent = RoundRobinGroupChat([child_team(ledger)], max_turns=1, custom_message_types=list(CAPACITY_EVENT_TYPES))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            stream = await run(parent)
        assert any(isinstance(m, CapacityDeferredEvent) for m in stream)

    async def test_a_child_wrapped_in_a_society_of_mind_agent_does_not_fail_its_parent(
        self, ledger: InMemoryLedger
    ) -> None:
        """The same holds when the events pass through a SocietyOfMindAgent on their way to the plain parent."""
        inner = SocietyOfMindAgent("society", team=child_team(ledger), model_client=ReplayChatCompletionClient(["ok"]))
        parent = RoundRobinGroupChat([inner], max_turns=1)
        with pytest.warns(CapacityConfigWarning, match="CAPACITY_EVENT_TYPES"):
            stream = await run(parent)
        result = stream[-1]
        assert isinstance(result, TaskResult)
        assert [m.source for m in result.messages if isinstance(m, BaseChatMessage)] == ["user", "free", "society"]

    async def test_a_child_run_directly_still_streams_its_events(self, ledger: InMemoryLedger) -> None:
        """Outside a parent, the run stream carries every capacity event, as before."""
        stream = [item async for item in child_team(ledger).run_stream(task="go")]
        assert any(isinstance(m, CapacityDeferredEvent) for m in stream)

    async def test_a_capacity_aware_parent_relays_them(self, ledger: InMemoryLedger) -> None:
        """A capacity-aware parent registers the events itself: they reach its stream, with no warning."""
        parent = CapacityAwareGroupChat([child_team(ledger)], max_turns=1, ledger=ledger)
        stream = await asyncio.wait_for(_collect(parent), TIMEOUT)  # type: ignore[arg-type]
        assert any(isinstance(m, CapacityDeferredEvent) for m in stream)
