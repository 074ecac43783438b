"""Overloaded members inside a CapacityAwareGroupChat: rerouted, cooled down, routed around, budgeted (I7)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import pytest
from autogen_agentchat.agents import AssistantAgent, BaseChatAgent
from autogen_agentchat.base import Response, TaskResult
from autogen_agentchat.conditions import MaxMessageTermination
from autogen_agentchat.messages import BaseAgentEvent, BaseChatMessage, TextMessage
from autogen_agentchat.teams import RoundRobinGroupChat
from autogen_core import CancellationToken

from autogen_capacity import (
    AgentCapacity,
    CapacityAwareGroupChat,
    CapacityExhausted,
    CapacityExhaustedEvent,
    InMemoryLedger,
    MemberOverloadedEvent,
    Overloaded,
    RetryBudget,
)
from autogen_capacity.testing import FakeLoopClock
from faults import QUICK, FlakyReplayClient, RateLimitError, quota_error

TIMEOUT = 30.0
UNBOUNDED = AgentCapacity()


class FlakyMember(BaseChatAgent):
    """Raises the scripted errors (or ``make()``'s error on every call), then answers; records each call's input."""

    def __init__(
        self,
        name: str,
        errors: Sequence[BaseException] = (),
        *,
        make: Callable[[], BaseException] | None = None,
        gate: asyncio.Event | None = None,
    ) -> None:
        super().__init__(name, description=f"Member {name}.")
        self._errors = list(errors)
        self._make = make
        self._gate = gate
        self.calls = 0
        self.answers = 0
        self.batches: list[list[str]] = []

    @property
    def produced_message_types(self) -> Sequence[type[BaseChatMessage]]:
        return (TextMessage,)

    async def on_messages(self, messages: Sequence[BaseChatMessage], cancellation_token: CancellationToken) -> Response:
        self.calls += 1
        self.batches.append([m.to_text() for m in messages])
        if self._make is not None:
            raise self._make()
        if self._errors:
            raise self._errors.pop(0)
        if self._gate is not None:
            await self._gate.wait()
        self.answers += 1
        return Response(chat_message=TextMessage(content=f"{self.name} answer {self.answers}", source=self.name))

    async def on_reset(self, cancellation_token: CancellationToken) -> None:
        pass


async def assert_nothing_in_flight(ledger: InMemoryLedger) -> None:
    snapshot = await ledger.snapshot()
    assert {key: usage.in_flight for key, usage in snapshot.items() if usage.in_flight} == {}


async def collect(
    team: CapacityAwareGroupChat, task: str = "go"
) -> tuple[list[BaseAgentEvent | BaseChatMessage], TaskResult]:
    items: list[BaseAgentEvent | BaseChatMessage] = []
    result: TaskResult | None = None
    async for item in team.run_stream(task=task):
        if isinstance(item, TaskResult):
            result = item
        else:
            items.append(item)
    assert result is not None
    return items, result


def sources(result: TaskResult) -> list[str]:
    return [m.source for m in result.messages if isinstance(m, BaseChatMessage)]


class TestReroute:
    async def test_a_429_does_not_end_the_run_and_the_turn_goes_elsewhere(self) -> None:
        """A member answering 429 with Retry-After is cooled down and another member takes its turn."""
        ledger = InMemoryLedger()
        a = FlakyMember("a", [RateLimitError(429, {"Retry-After": "7"})])
        b = FlakyMember("b")
        team = CapacityAwareGroupChat(
            [a, b], termination_condition=MaxMessageTermination(3), ledger=ledger, emit_team_events=True
        )
        items, result = await asyncio.wait_for(collect(team), TIMEOUT)
        assert sources(result) == ["user", "b", "b"]
        assert (a.calls, b.calls) == (1, 2)
        overloaded = [m for m in items if isinstance(m, MemberOverloadedEvent)]
        assert len(overloaded) == 1
        event = overloaded[0]
        assert (event.member, event.key, event.kind, event.cooldown_s) == ("a", "a", "throttled", 7.0)
        assert "RateLimitError" in event.content
        assert result.stop_reason == "Maximum number of messages 3 reached, current message count: 3"
        await assert_nothing_in_flight(ledger)

    async def test_the_hinted_delay_is_honoured_exactly(self, fake_clock: FakeLoopClock) -> None:
        """The overloaded member's key cools down for exactly Retry-After, then it is routed to again."""
        ledger, gate = InMemoryLedger(), asyncio.Event()
        a = FlakyMember("a", [RateLimitError(429, {"Retry-After": "7"})])
        b = FlakyMember("b", gate=gate)
        team = CapacityAwareGroupChat([a, b], max_turns=2, ledger=ledger)
        run = asyncio.ensure_future(team.run(task="go"))
        for _ in range(200):
            if b.calls:
                break
            await asyncio.sleep(0)
        assert (a.calls, b.calls) == (1, 1)
        status = await ledger.status("a", UNBOUNDED)
        assert (status.blocked_by, status.ready_in) == ("cooldown", 7.0)
        fake_clock.advance(7)
        assert (await ledger.status("a", UNBOUNDED)).blocked_by is None
        gate.set()
        result = await asyncio.wait_for(run, TIMEOUT)
        assert sources(result) == ["user", "b", "a"]
        assert a.calls == 2
        await assert_nothing_in_flight(ledger)

    async def test_cancelling_the_run_cancels_the_wait_after_an_overload(self) -> None:
        """The run's token cancels the rerouted turn's wait (here a minute, the only member's Retry-After): the
        run ends with CancelledError at once, with nothing held."""
        ledger = InMemoryLedger()
        a = FlakyMember("a", [RateLimitError(429, {"Retry-After": "60"})])
        team = CapacityAwareGroupChat(
            [a], capacities={"a": AgentCapacity(max_concurrent=1, **QUICK)}, max_turns=1, ledger=ledger
        )
        token = CancellationToken()
        run = asyncio.ensure_future(team.run(task="go", cancellation_token=token))
        while (await ledger.status("a", UNBOUNDED)).blocked_by != "cooldown":  # noqa: ASYNC110
            await asyncio.sleep(0)  # the ledger has no "cooled down" signal
        token.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(run, TIMEOUT)  # not a minute
        assert a.calls == 1
        await assert_nothing_in_flight(ledger)

    async def test_overloaded_raised_by_a_member_is_throttled(self) -> None:
        """``Overloaded`` is treated as a 429: cooled down for its retry_after, turn rerouted."""
        ledger = InMemoryLedger()
        a = FlakyMember("a", [Overloaded("busy", retry_after=2.5)])
        b = FlakyMember("b")
        team = CapacityAwareGroupChat([a, b], max_turns=1, ledger=ledger, emit_team_events=True)
        items, result = await asyncio.wait_for(collect(team), TIMEOUT)
        assert sources(result) == ["user", "b"]
        [event] = [m for m in items if isinstance(m, MemberOverloadedEvent)]
        assert (event.kind, event.cooldown_s) == ("throttled", 2.5)
        assert event.content == "Overloaded: busy"
        await assert_nothing_in_flight(ledger)

    async def test_a_contracted_member_cools_down_by_its_schedule_without_a_hint(self) -> None:
        """Without Retry-After the cooldown is the contract's next delay, and the lease is released."""
        ledger = InMemoryLedger()
        cap = AgentCapacity(max_concurrent=1, backoff_initial_ms=4000, backoff_ceiling_ms=8000, backoff_jitter=False)
        a = FlakyMember("a", [RateLimitError(503)])
        team = CapacityAwareGroupChat(
            [a, FlakyMember("b")], capacities={"a": cap}, max_turns=1, ledger=ledger, emit_team_events=True
        )
        items, result = await asyncio.wait_for(collect(team), TIMEOUT)
        assert sources(result) == ["user", "b"]
        [event] = [m for m in items if isinstance(m, MemberOverloadedEvent)]
        assert event.cooldown_s == 4.0
        assert (await ledger.status("a", cap)).blocked_by == "cooldown"
        await assert_nothing_in_flight(ledger)

    async def test_the_overloaded_member_keeps_its_message_buffer(self) -> None:
        """When the overloaded member speaks later, it is handed every message it has not answered yet."""
        ledger = InMemoryLedger()
        a = FlakyMember("a", [Overloaded(retry_after=0)])
        b = FlakyMember("b")
        team = CapacityAwareGroupChat([a, b], max_turns=2, ledger=ledger)
        result = await asyncio.wait_for(team.run(task="go"), TIMEOUT)
        assert sources(result) == ["user", "b", "a"]
        assert a.batches == [["go"], ["go", "b answer 1"]]
        await assert_nothing_in_flight(ledger)

    async def test_an_assistant_retried_after_overload_sees_each_message_once(self) -> None:
        """An AssistantAgent whose model answered 429 does not see the kept messages twice when it speaks."""
        ledger = InMemoryLedger()
        client = FlakyReplayClient(["a answer"], [RateLimitError(429, {"retry-after": "0"})])
        a = AssistantAgent("a", model_client=client, system_message="You are a.")
        b = FlakyMember("b")
        team = CapacityAwareGroupChat([a, b], max_turns=2, ledger=ledger)
        result = await asyncio.wait_for(team.run(task="go"), TIMEOUT)
        assert sources(result) == ["user", "b", "a"]
        assert [m.content for m in client.seen[-1]] == ["You are a.", "go", "b answer 1"]
        await assert_nothing_in_flight(ledger)


class TestExhausted:
    async def test_an_exhausted_member_is_never_called_again(self) -> None:
        """A spent quota routes the member around for the rest of the run and marks its key exhausted."""
        ledger = InMemoryLedger()
        a = FlakyMember("a", make=quota_error)
        b = FlakyMember("b")
        team = CapacityAwareGroupChat([a, b], max_turns=4, ledger=ledger, emit_team_events=True)
        items, result = await asyncio.wait_for(collect(team), TIMEOUT)
        assert sources(result) == ["user", "b", "b", "b", "b"]
        assert a.calls == 1
        [event] = [m for m in items if isinstance(m, MemberOverloadedEvent)]
        assert (event.member, event.kind, event.cooldown_s) == ("a", "exhausted", 300.0)
        assert (await ledger.status("a", UNBOUNDED)).blocked_by == "exhausted"
        await assert_nothing_in_flight(ledger)

    async def test_every_member_exhausted_ends_the_run_cleanly(self) -> None:
        """When every member's quota is spent, the run ends with a Capacity exhausted stop reason."""
        ledger = InMemoryLedger()
        members = [FlakyMember(name, make=quota_error) for name in ("a", "b")]
        team = CapacityAwareGroupChat(members, max_turns=4, ledger=ledger, emit_team_events=True)
        items, result = await asyncio.wait_for(collect(team), TIMEOUT)
        assert result.stop_reason is not None
        assert result.stop_reason.startswith("Capacity exhausted")
        assert [m.calls for m in members] == [1, 1]
        assert any(isinstance(m, CapacityExhaustedEvent) for m in items)
        await assert_nothing_in_flight(ledger)


class TestPlainErrors:
    @pytest.mark.parametrize("impl", ["autogen", "capacity"])
    async def test_a_plain_error_ends_the_run_as_in_autogen(self, impl: str) -> None:
        """An ordinary exception still ends the run with AutoGen's RuntimeError, leases released."""
        ledger = InMemoryLedger()
        a, b = FlakyMember("a", [ValueError("boom")]), FlakyMember("b")
        team = (
            RoundRobinGroupChat([a, b], max_turns=3)
            if impl == "autogen"
            else CapacityAwareGroupChat(
                [a, b], capacities={"a": AgentCapacity(max_concurrent=1)}, max_turns=3, ledger=ledger
            )
        )
        with pytest.raises(RuntimeError, match=r"ValueError: boom"):
            await asyncio.wait_for(team.run(task="go"), TIMEOUT)
        assert (a.calls, b.calls) == (1, 0)
        await assert_nothing_in_flight(ledger)


class TestRetryBudget:
    async def test_the_budget_caps_attempts_in_a_storm(self) -> None:
        """When every member always answers 429, RetryBudget(ratio=0, min_retries=2) ends the run after 3 calls."""
        ledger = InMemoryLedger()
        members = [FlakyMember(name, make=lambda: RateLimitError(429)) for name in ("a", "b", "c")]
        team = CapacityAwareGroupChat(
            members,
            capacities={m.name: AgentCapacity(**QUICK) for m in members},
            retry_budget=RetryBudget(ratio=0, min_retries=2),
            max_turns=10,
            ledger=ledger,
        )
        result = await asyncio.wait_for(team.run(task="go"), TIMEOUT)
        assert result.stop_reason is not None
        assert result.stop_reason.startswith("Capacity exhausted")
        assert "retry budget" in result.stop_reason
        assert sum(m.calls for m in members) == 3
        await assert_nothing_in_flight(ledger)

    async def test_a_storm_without_a_budget_still_ends(self) -> None:
        """With no retry budget, members that always 429 are given up after max_caller_retries overloads each."""
        ledger = InMemoryLedger()
        members = [FlakyMember(name, make=lambda: RateLimitError(429)) for name in ("a", "b")]
        team = CapacityAwareGroupChat(
            members,
            capacities={m.name: AgentCapacity(max_caller_retries=2, **QUICK) for m in members},
            max_turns=10,
            ledger=ledger,
        )
        result = await asyncio.wait_for(team.run(task="go"), TIMEOUT)
        assert result.stop_reason is not None
        assert result.stop_reason.startswith("Capacity exhausted")
        assert [m.calls for m in members] == [3, 3]
        await assert_nothing_in_flight(ledger)

    async def test_on_exhausted_raise_raises(self) -> None:
        """With on_exhausted='raise', a spent budget raises CapacityExhausted after the stream ends."""
        ledger = InMemoryLedger()
        members = [FlakyMember(name, make=lambda: Overloaded(retry_after=0.001)) for name in ("a", "b")]
        team = CapacityAwareGroupChat(
            members,
            capacities={m.name: AgentCapacity(**QUICK) for m in members},
            retry_budget=RetryBudget(ratio=0, min_retries=1),
            on_exhausted="raise",
            max_turns=10,
            ledger=ledger,
        )
        with pytest.raises(CapacityExhausted, match="retry budget"):
            await asyncio.wait_for(team.run(task="go"), TIMEOUT)
        await assert_nothing_in_flight(ledger)
        with pytest.raises(CapacityExhausted, match="retry budget"):  # not left marked as running
            await asyncio.wait_for(team.run(task="again"), TIMEOUT)
        await assert_nothing_in_flight(ledger)
