"""Priorities and deadlines under overload (issue 18): a freed slot goes to the highest class (aging lifts a long
wait), a lower class is shed at max_queue, and a caller with a deadline never waits past it, never starts a
turn it cannot finish, and fails fast when its expected wait already exceeds it."""

from __future__ import annotations

import asyncio

import pytest
from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.conditions import MaxMessageTermination, TimeoutTermination
from autogen_ext.models.replay import ReplayChatCompletionClient

from agents import WorkerAgent
from autogen_capacity import (
    AgentCapacity,
    CapacityAwareAgentTool,
    CapacityAwareGroupChat,
    CapacityExhausted,
    InMemoryLedger,
    Lease,
    QueueFull,
    acquire,
)
from autogen_capacity.routing import Routing
from autogen_capacity.testing import FakeLoopClock, settle

TIMEOUT = 30.0
ONE = AgentCapacity(max_concurrent=1, backoff_initial_ms=10_000, backoff_ceiling_ms=10_000, max_caller_retries=20)


async def held(ledger: InMemoryLedger, capacity: AgentCapacity = ONE) -> Lease:
    lease = await ledger.try_acquire("k", capacity)
    assert lease is not None
    return lease


class TestClasses:
    async def test_a_freed_slot_goes_to_the_highest_class(
        self, ledger: InMemoryLedger, fake_clock: FakeLoopClock
    ) -> None:
        """Sheddable, default and critical callers wait, in that order of arrival: critical is served first."""
        holder = await held(ledger)
        order: list[str] = []

        async def call(priority: str) -> None:
            lease = await acquire("k", ONE, ledger=ledger, priority=priority)  # type: ignore[arg-type]
            order.append(priority)
            await lease.release()

        callers = []
        for priority in ("sheddable", "default", "critical"):
            callers.append(asyncio.ensure_future(call(priority)))
            await settle()
        await holder.release()
        await settle(*callers)

        assert order == ["critical", "default", "sheddable"]

    async def test_aging_lifts_a_long_wait(self, fake_clock: FakeLoopClock) -> None:
        """A sheddable caller that waited two aging periods is served before a critical one that came later."""
        ledger = InMemoryLedger(aging_s=10)
        holder = await held(ledger)
        old = asyncio.ensure_future(acquire("k", ONE, ledger=ledger, priority="sheddable"))
        await settle(old)
        fake_clock.advance(20.5)
        late = asyncio.ensure_future(acquire("k", ONE, ledger=ledger, priority="critical"))
        await settle(late)

        await holder.release()
        await settle(old, late)

        assert old.done()
        assert not late.done()
        await old.result().release()
        await settle(late)
        assert late.done()
        await late.result().release()
        await ledger.aclose()

    async def test_a_sheddable_waiter_is_shed_for_a_critical_one(
        self, ledger: InMemoryLedger, fake_clock: FakeLoopClock
    ) -> None:
        """At max_queue, a critical caller takes the place of the sheddable one, whose wait ends at once."""
        capacity = ONE.model_copy(update={"max_queue": 1})
        holder = await held(ledger, capacity)
        shed = asyncio.ensure_future(acquire("k", capacity, ledger=ledger, priority="sheddable"))
        await settle(shed)
        critical = asyncio.ensure_future(acquire("k", capacity, ledger=ledger, priority="critical"))
        await settle(shed, critical)

        with pytest.raises(QueueFull, match=r"sheddable caller .* was shed for a critical one"):
            shed.result()
        await holder.release()
        await settle(critical)
        await critical.result().release()

    async def test_a_critical_waiter_is_never_shed(self, ledger: InMemoryLedger, fake_clock: FakeLoopClock) -> None:
        """A full line of critical callers refuses a newcomer of a lower class instead."""
        capacity = ONE.model_copy(update={"max_queue": 1})
        holder = await held(ledger, capacity)
        critical = asyncio.ensure_future(acquire("k", capacity, ledger=ledger, priority="critical"))
        await settle(critical)

        with pytest.raises(QueueFull):
            await acquire("k", capacity, ledger=ledger, priority="default")
        assert not critical.done()
        await holder.release()
        await settle(critical)
        await critical.result().release()


class TestDeadlines:
    async def test_fails_fast_when_the_expected_wait_exceeds_the_deadline(
        self, ledger: InMemoryLedger, fake_clock: FakeLoopClock
    ) -> None:
        """Leases on the key are held 10 s: a caller with 2 s left is told at once, with the expected wait."""
        first = await held(ledger)
        fake_clock.advance(10)
        await first.release()
        await held(ledger)

        with pytest.raises(CapacityExhausted, match="expected wait in line") as raised:
            await acquire("k", ONE, ledger=ledger, deadline_s=2)

        assert raised.value.retry_after == pytest.approx(10)

    async def test_never_waits_past_the_deadline(self, ledger: InMemoryLedger, fake_clock: FakeLoopClock) -> None:
        """With nothing known about the key's service time, the wait ends at the deadline, not the contract's."""
        await held(ledger)
        caller = asyncio.ensure_future(acquire("k", ONE, ledger=ledger, deadline_s=3))
        await settle(caller)
        fake_clock.advance(2.999)
        await settle(caller)
        assert not caller.done()
        fake_clock.advance(0.001)
        await settle(caller)

        with pytest.raises(CapacityExhausted, match="deadline passed while waiting"):
            caller.result()

    @pytest.mark.parametrize("routing", ["headroom", "round_robin"])
    async def test_never_starts_a_turn_it_cannot_finish(self, routing: Routing) -> None:
        """A member whose turns take about 0.2 s is not started with 0.05 s left (the lease is given back), also when
        it was leased before any status was read (its reason then names no candidate)."""
        ledger = InMemoryLedger()
        slow = WorkerAgent("slow", delay=0.2)
        contract = AgentCapacity(max_concurrent=1)
        warm = CapacityAwareGroupChat([slow], capacities={"slow": contract}, ledger=ledger, max_turns=1)
        await asyncio.wait_for(warm.run(task="learn the service time"), TIMEOUT)
        team = CapacityAwareGroupChat(
            [slow], capacities={"slow": contract}, ledger=ledger, max_turns=1, deadline_s=0.05, routing=routing
        )

        result = await asyncio.wait_for(team.run(task="go"), TIMEOUT)

        assert result.stop_reason is not None
        assert "takes about" in result.stop_reason
        assert slow.calls == 1
        assert (await ledger.snapshot())["slow"].in_flight == 0

    async def test_a_timeout_termination_sets_the_deadline(self) -> None:
        """A team whose only member is saturated and whose TimeoutTermination is 0.2 s ends about then, not after
        its contract's long schedule."""
        ledger = InMemoryLedger()
        contract = AgentCapacity(max_concurrent=1, backoff_initial_ms=10_000, backoff_ceiling_ms=10_000)
        blocker = await ledger.try_acquire("a", contract)
        team = CapacityAwareGroupChat(
            [WorkerAgent("a")],
            capacities={"a": contract},
            ledger=ledger,
            termination_condition=TimeoutTermination(0.2) | MaxMessageTermination(3),
        )
        loop = asyncio.get_running_loop()
        started = loop.time()

        result = await asyncio.wait_for(team.run(task="go"), TIMEOUT)

        assert result.stop_reason is not None
        # Whichever notices first: the engine's deadline, or the condition it re-checks every 250 ms.
        assert "deadline" in result.stop_reason or "Timeout" in result.stop_reason
        assert loop.time() - started < 5  # not the 50 s the schedule allows
        assert blocker is not None
        await blocker.release()


def test_priority_and_deadline_round_trip_in_config() -> None:
    """A team's and a tool's priority, and a team's deadline, are part of their component config."""
    assistant = AssistantAgent("a", model_client=ReplayChatCompletionClient(["hi"]))
    team = CapacityAwareGroupChat([assistant], priority="critical", deadline_s=12.5)
    loaded = CapacityAwareGroupChat.load_component(team.dump_component())
    assert loaded.dump_component() == team.dump_component()
    assert team.dump_component().config["priority"] == "critical"
    assert team.dump_component().config["deadline_s"] == 12.5

    tool = CapacityAwareAgentTool(assistant, AgentCapacity(max_concurrent=1), priority="sheddable")
    assert CapacityAwareAgentTool.load_component(tool.dump_component()).dump_component() == tool.dump_component()
    assert tool.dump_component().config["priority"] == "sheddable"


@pytest.mark.parametrize("bad", [{"priority": "urgent"}, {"deadline_s": 0}, {"deadline_s": -1}])
def test_bad_priority_or_deadline_names_the_field(bad: dict[str, object]) -> None:
    """A class that does not exist, or a deadline that is not positive, is refused naming the field."""
    with pytest.raises(ValueError, match=next(iter(bad))):
        CapacityAwareGroupChat([WorkerAgent("a")], **bad)  # type: ignore[arg-type]


async def test_a_release_that_meets_the_end_of_a_window_serves_the_higher_class(fake_clock: FakeLoopClock) -> None:
    """A critical waiter whose backoff window ended in the same instant as a release (its wait timed out and it
    has not looked yet) is still the one served: before, the release passed it over and handed the slot to a
    default waiter, so a steady stream of critical work let default callers jump it."""
    ledger = InMemoryLedger()
    holder = await ledger.try_acquire("k", ONE)
    assert holder is not None
    critical = await ledger.join_queue({"k": ONE}, priority="critical")
    default = await ledger.join_queue({"k": ONE}, priority="default")
    waiting = asyncio.ensure_future(critical.wait(1.0))
    await settle(waiting)
    fake_clock.advance(1.0)  # the critical waiter's window ends ...
    for _ in range(10):  # until its timer has fired: the waiter itself runs a pass later
        if critical._waiter.future.done():  # type: ignore[attr-defined]
            break
        await asyncio.sleep(0)
    assert critical._waiter.future.done()  # type: ignore[attr-defined]
    await holder.release()  # ... and, before it runs again, the slot comes back
    assert await waiting is True
    assert await default.wait(0) is False
    await critical.leave()
    await default.leave()
