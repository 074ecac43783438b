"""CapacityAwareGroupChat under contracts: leases, deferral, waiting, exhaustion, nesting, config."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import weakref
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from typing import Any

import pytest
from autogen_agentchat.base import Response, TaskResult, Team
from autogen_agentchat.conditions import ExternalTermination, MaxMessageTermination
from autogen_agentchat.messages import BaseAgentEvent, BaseChatMessage, TextMessage
from autogen_agentchat.teams import RoundRobinGroupChat
from autogen_core import CancellationToken

from agents import ConcurrencyProbe, WorkerAgent
from autogen_capacity import (
    CAPACITY_EVENT_TYPES,
    AgentCapacity,
    CapacityAwareGroupChat,
    CapacityDeferredEvent,
    CapacityExhausted,
    CapacityExhaustedEvent,
    CapacityWaitEvent,
    ContractError,
    InMemoryLedger,
    KeyStatus,
    Lease,
    Routing,
)
from autogen_capacity import _team as team_module

TIMEOUT = 30.0
QUICK = {"backoff_initial_ms": 1, "backoff_ceiling_ms": 5, "backoff_jitter": False}
SLOW = {"backoff_initial_ms": 60_000, "backoff_ceiling_ms": 60_000, "backoff_jitter": False}


class CountingLedger(InMemoryLedger):
    """Counts the reads and acquisitions a team asks for."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    async def statuses(self, keys: Mapping[str, AgentCapacity]) -> dict[str, KeyStatus]:
        self.calls["statuses"] += 1
        return await super().statuses(keys)

    async def status(self, key: str, capacity: AgentCapacity) -> KeyStatus:
        self.calls["status"] += 1
        return await super().status(key, capacity)

    async def acquire_or_status(
        self, key: str, capacity: AgentCapacity, *, idle_only: bool = False
    ) -> Lease | KeyStatus:
        self.calls["acquire_or_status"] += 1
        return await super().acquire_or_status(key, capacity, idle_only=idle_only)


def pool_team(
    limits: dict[str, int], probe: ConcurrencyProbe, ledger: InMemoryLedger, *, delay: float, max_turns: int
) -> CapacityAwareGroupChat:
    """A team of workers with the given slot limits, quick backoffs and retries enough for heavy contention."""
    return CapacityAwareGroupChat(
        [WorkerAgent(name, probe=probe, delay=delay) for name in limits],
        capacities={
            name: AgentCapacity(max_concurrent=n, max_caller_retries=100, **QUICK) for name, n in limits.items()
        },
        ledger=ledger,
        max_turns=max_turns,
    )


async def until_waiting(ledger: InMemoryLedger, key: str) -> None:
    """Return once a caller waits for ``key`` (a run's first selection reaches the stream only after it)."""
    while (usage := (await ledger.snapshot()).get(key)) is None or not usage.waiting:  # noqa: ASYNC110
        await asyncio.sleep(0)  # yields to the run without moving time; the ledger has no "waiter arrived" signal


async def in_flight(ledger: InMemoryLedger) -> dict[str, int]:
    return {key: usage.in_flight for key, usage in (await ledger.snapshot()).items() if usage.in_flight}


class TestConstruction:
    def test_unknown_capacities_name_is_an_error_naming_it(self) -> None:
        """A capacities entry for no participant raises a ContractError that names it."""
        with pytest.raises(ContractError, match="'ghost'"):
            CapacityAwareGroupChat([WorkerAgent("a")], capacities={"ghost": AgentCapacity(max_concurrent=1)})

    def test_selector_routing_needs_a_model_client(self) -> None:
        """routing='selector' without a model client is a ValueError."""
        with pytest.raises(ValueError, match="model_client"):
            CapacityAwareGroupChat([WorkerAgent("a"), WorkerAgent("b")], routing="selector")

    def test_participant_capacity_attribute_is_honoured_and_mapping_wins(self) -> None:
        """A participant's own ``capacity`` counts, but the team's ``capacities`` entry wins."""
        own = AgentCapacity(max_concurrent=2)
        mapped = AgentCapacity(max_concurrent=5)
        team = CapacityAwareGroupChat(
            [WorkerAgent("a", capacity=own), WorkerAgent("b", capacity=own), WorkerAgent("c")],
            capacities={"b": mapped},
        )
        assert team.capacity_of("a") == own
        assert team.capacity_of("b") == mapped
        assert team.capacity_of("c") is None

    @pytest.mark.parametrize(
        ("routing", "expected"),
        [("headroom", None), ("round_robin", 2)],  # pool: an unbounded member makes the team unbounded
    )
    def test_capacity_aggregates_members_by_routing(self, routing: str, expected: int | None) -> None:
        """Pool routing sums member slots, round robin takes the minimum; the declared contract caps both."""
        team = CapacityAwareGroupChat(
            [WorkerAgent("a"), WorkerAgent("b")],
            capacities={"a": AgentCapacity(max_concurrent=2)},
            routing=routing,  # type: ignore[arg-type]
        )
        assert team.capacity is not None
        assert team.capacity.max_concurrent == expected
        capped = CapacityAwareGroupChat(
            [WorkerAgent("a"), WorkerAgent("b")],
            capacities={"a": AgentCapacity(max_concurrent=3), "b": AgentCapacity(max_concurrent=4)},
            capacity=AgentCapacity(max_concurrent=5, rpm=60),
        )
        assert capped.capacity is not None
        assert (capped.capacity.max_concurrent, capped.capacity.rpm) == (5, 60)

    def test_event_types_are_registered(self) -> None:
        """The capacity events are registered even when the user lists some of them already."""
        team = CapacityAwareGroupChat([WorkerAgent("a")], custom_message_types=[CapacityWaitEvent])
        factory = team._message_factory
        assert all(factory.is_registered(t) for t in CAPACITY_EVENT_TYPES)


class TestLeases:
    async def test_concurrent_teams_never_exceed_member_limits(self) -> None:
        """Twelve teams sharing a ledger never exceed any member's max_concurrent, and all finish."""
        ledger, probe = InMemoryLedger(), ConcurrencyProbe()
        limits = {"fast": 3, "mid": 2, "slow": 1}

        runs = (pool_team(limits, probe, ledger, delay=0.005, max_turns=6).run(task="go") for _ in range(12))
        results = await asyncio.wait_for(asyncio.gather(*runs), TIMEOUT)
        assert all(r.stop_reason is not None and "Maximum number of turns" in r.stop_reason for r in results)
        assert all(probe.peak[name] <= limit for name, limit in limits.items())
        assert await in_flight(ledger) == {}

    async def test_members_with_more_capacity_serve_more_turns(self) -> None:
        """Under load, headroom routing gives the roomiest member the most turns."""
        ledger, probe = InMemoryLedger(), ConcurrencyProbe()
        limits = {"big": 4, "small": 1}

        runs = (pool_team(limits, probe, ledger, delay=0.01, max_turns=4).run(task="go") for _ in range(10))
        await asyncio.wait_for(asyncio.gather(*runs), TIMEOUT)
        assert probe.turns["big"] > probe.turns["small"]
        assert probe.peak["big"] <= 4
        assert probe.peak["small"] <= 1

    async def test_saturated_member_is_deferred_with_an_event(self) -> None:
        """A member held elsewhere is passed over, and a CapacityDeferredEvent says who, why and who spoke."""
        ledger = InMemoryLedger()
        contract = AgentCapacity(max_concurrent=1)
        held = await ledger.try_acquire("a", contract)
        assert held is not None
        team = CapacityAwareGroupChat(
            [WorkerAgent("a"), WorkerAgent("b")],
            capacities={"a": contract},
            ledger=ledger,
            max_turns=1,
            emit_team_events=True,
        )
        stream = [m async for m in team.run_stream(task="go")]
        deferred = [m for m in stream if isinstance(m, CapacityDeferredEvent)]
        assert len(deferred) == 1
        assert [(d.name, d.reason) for d in deferred[0].content] == [("a", "slots")]
        assert deferred[0].speaker == "b"
        spoke = [m.source for m in stream if isinstance(m, TextMessage)]
        assert spoke == ["user", "b"]
        await held.release()

    @pytest.mark.parametrize("routing", ["round_robin", "headroom"])
    async def test_saturated_next_member_is_deferred_with_an_event(self, routing: str) -> None:
        """The member next in rotation held elsewhere: with either routing it is passed over and reported."""
        ledger = InMemoryLedger()
        contract = AgentCapacity(max_concurrent=1)
        held = await ledger.try_acquire("a", contract)
        assert held is not None
        team = CapacityAwareGroupChat(
            [WorkerAgent("a"), WorkerAgent("b"), WorkerAgent("c")],
            capacities={name: contract for name in "abc"},
            ledger=ledger,
            routing=routing,  # type: ignore[arg-type]
            max_turns=1,
            emit_team_events=True,
        )
        stream = [m async for m in team.run_stream(task="go")]
        [deferred] = [m for m in stream if isinstance(m, CapacityDeferredEvent)]
        assert [(d.name, d.reason) for d in deferred.content] == [("a", "slots")]
        assert deferred.speaker == "b"
        await held.release()

    async def test_a_turn_reads_no_status_when_its_member_has_room(self) -> None:
        """Round-robin routing leases the member next in rotation first: one ledger call a turn, not one per
        member; so does headroom routing while that member is idle (nobody can rank above it)."""
        counts: dict[str, Counter[str]] = {}
        for routing in ("round_robin", "headroom"):
            ledger = CountingLedger()
            team = CapacityAwareGroupChat(
                [WorkerAgent(f"m{i}") for i in range(16)],
                capacities={f"m{i}": AgentCapacity(max_concurrent=4) for i in range(16)},
                ledger=ledger,
                routing=routing,  # type: ignore[arg-type]
                max_turns=20,
            )
            result = await asyncio.wait_for(team.run(task="go"), TIMEOUT)
            assert [m.source for m in result.messages[1:]] == [f"m{i % 16}" for i in range(20)]
            counts[routing] = ledger.calls
        assert counts["round_robin"] == {"acquire_or_status": 20}
        assert counts["headroom"] == {"acquire_or_status": 20}

    async def test_waits_for_a_release_then_admits(self) -> None:
        """When nobody has headroom the team waits, and a release admits it without using the retries."""
        ledger = InMemoryLedger()
        contract = AgentCapacity(max_concurrent=1, max_caller_retries=1, **SLOW)
        held = await ledger.try_acquire("a", contract)
        assert held is not None
        team = CapacityAwareGroupChat(
            [WorkerAgent("a")], capacities={"a": contract}, ledger=ledger, max_turns=1, emit_team_events=True
        )
        run = asyncio.ensure_future(_collect(team))
        await asyncio.wait_for(until_waiting(ledger, "a"), TIMEOUT)
        await held.release()
        seen = await asyncio.wait_for(run, TIMEOUT)
        assert sum(isinstance(m, CapacityWaitEvent) for m in seen) == 1
        result = seen[-1]
        assert isinstance(result, TaskResult)
        assert [m.source for m in result.messages if isinstance(m, TextMessage)] == ["user", "a"]
        assert await in_flight(ledger) == {}

    async def test_slot_is_free_once_the_response_is_produced(self) -> None:
        """The member's lease is released when its response arrives, while its stream is still finishing."""
        ledger = InMemoryLedger()
        finishing, release = asyncio.Event(), asyncio.Event()
        in_flight_after_response: list[dict[str, int]] = []

        class LingeringAgent(WorkerAgent):
            async def on_messages_stream(
                self, messages: Sequence[BaseChatMessage], cancellation_token: CancellationToken
            ) -> AsyncGenerator[BaseAgentEvent | BaseChatMessage | Response, None]:
                yield await self.on_messages(messages, cancellation_token)
                in_flight_after_response.append(await in_flight(ledger))
                finishing.set()
                await release.wait()

        team = CapacityAwareGroupChat(
            [LingeringAgent("a")], capacities={"a": AgentCapacity(max_concurrent=1)}, ledger=ledger, max_turns=1
        )
        run = asyncio.ensure_future(team.run(task="go"))
        await asyncio.wait_for(finishing.wait(), TIMEOUT)
        assert in_flight_after_response == [{}]
        release.set()
        result = await asyncio.wait_for(run, TIMEOUT)
        assert result.stop_reason == "Maximum number of turns 1 reached."


class TestExhaustion:
    async def test_exhaustion_ends_the_run_with_a_stop_reason(self) -> None:
        """Past max_caller_retries the run stops with a reason that starts with 'Capacity exhausted'."""
        ledger = InMemoryLedger()
        contract = AgentCapacity(max_concurrent=1, max_caller_retries=2, **QUICK)
        held = await ledger.try_acquire("a", contract)
        assert held is not None
        team = CapacityAwareGroupChat(
            [WorkerAgent("a")], capacities={"a": contract}, ledger=ledger, emit_team_events=True
        )
        stream = await asyncio.wait_for(_collect(team), TIMEOUT)
        result = stream[-1]
        assert isinstance(result, TaskResult)
        assert result.stop_reason is not None
        assert result.stop_reason.startswith("Capacity exhausted")
        assert "a: slots" in result.stop_reason
        assert sum(isinstance(m, CapacityWaitEvent) for m in stream) == 2
        assert any(isinstance(m, CapacityExhaustedEvent) for m in stream)
        await held.release()
        assert await in_flight(ledger) == {}

    async def test_raise_mode_raises_capacity_exhausted_and_team_stays_usable(self) -> None:
        """on_exhausted='raise' raises CapacityExhausted after the stream, and the team can run again."""
        ledger = InMemoryLedger()
        contract = AgentCapacity(max_concurrent=1, max_caller_retries=0)
        held = await ledger.try_acquire("a", contract)
        assert held is not None
        team = CapacityAwareGroupChat(
            [WorkerAgent("a")], capacities={"a": contract}, ledger=ledger, on_exhausted="raise", max_turns=1
        )
        with pytest.raises(CapacityExhausted, match="Capacity exhausted") as raised:
            await asyncio.wait_for(team.run(task="go"), TIMEOUT)
        assert raised.value.snapshot["a"].in_flight == 1
        await held.release()
        result = await asyncio.wait_for(team.run(task="again"), TIMEOUT)
        assert result.stop_reason is not None
        assert "Maximum number of turns" in result.stop_reason

    async def test_external_termination_is_honoured_while_waiting(self) -> None:
        """ExternalTermination set during a long wait ends the run promptly, not at the backoff deadline."""
        ledger = InMemoryLedger()
        contract = AgentCapacity(max_concurrent=1, **SLOW)
        held = await ledger.try_acquire("a", contract)
        assert held is not None
        stop = ExternalTermination()
        team = CapacityAwareGroupChat(
            [WorkerAgent("a")],
            capacities={"a": contract},
            ledger=ledger,
            termination_condition=stop,
            emit_team_events=True,
        )

        run = asyncio.ensure_future(team.run(task="go"))
        await asyncio.wait_for(until_waiting(ledger, "a"), TIMEOUT)
        stop.set()
        result = await asyncio.wait_for(run, TIMEOUT)
        assert result.stop_reason == "External termination requested"
        await held.release()

    async def test_cancellation_while_waiting_leaves_nothing_in_flight(self) -> None:
        """Cancelling a run that waits (or holds leases) releases everything, and the team runs again."""
        ledger = InMemoryLedger()
        gate = asyncio.Event()
        probe = ConcurrencyProbe()
        team = CapacityAwareGroupChat(
            [WorkerAgent("a", gate=gate, probe=probe)],
            capacities={"a": AgentCapacity(max_concurrent=1)},
            ledger=ledger,
            max_turns=1,
        )
        token = CancellationToken()
        run = asyncio.ensure_future(team.run(task="go", cancellation_token=token))
        await asyncio.wait_for(probe.entered.wait(), TIMEOUT)  # the member holds its lease, waiting on the gate
        assert await in_flight(ledger) == {"a": 1}
        token.cancel()
        gate.set()  # the runtime never cancels a turn's task: the run ends once the turn returns
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(run, TIMEOUT)
        assert await in_flight(ledger) == {}
        result = await asyncio.wait_for(team.run(task="again"), TIMEOUT)
        assert result.stop_reason is not None
        assert await in_flight(ledger) == {}


class TestNesting:
    async def test_nested_team_with_one_slot_runs_without_self_deadlock(self) -> None:
        """A child declaring max_concurrent=1 inside a parent is leased once (by itself), not twice."""
        ledger = InMemoryLedger()
        child = CapacityAwareGroupChat(
            [WorkerAgent("inner")],
            name="child",
            capacity=AgentCapacity(max_concurrent=1),
            ledger=ledger,
            max_turns=1,
        )
        parent = CapacityAwareGroupChat([child, WorkerAgent("outer")], ledger=ledger, max_turns=4)
        result = await asyncio.wait_for(parent.run(task="go"), TIMEOUT)
        sources = [m.source for m in result.messages]
        assert sources.count("inner") == 2
        assert sources.count("outer") == 2
        assert (await ledger.snapshot())["child"].acquired == 2
        assert await in_flight(ledger) == {}

    async def test_parent_defers_a_child_without_headroom(self) -> None:
        """A parent ranks a capacity-aware child by its live headroom and passes it over when it is full."""
        ledger = InMemoryLedger()
        contract = AgentCapacity(max_concurrent=1)
        child = CapacityAwareGroupChat(
            [WorkerAgent("inner")], name="child", capacity=contract, ledger=ledger, max_turns=1
        )
        held = await ledger.try_acquire("child", contract)
        assert held is not None
        parent = CapacityAwareGroupChat(
            [child, WorkerAgent("outer")], ledger=ledger, max_turns=1, emit_team_events=True
        )
        stream = [m async for m in parent.run_stream(task="go")]
        deferred = [m for m in stream if isinstance(m, CapacityDeferredEvent)]
        assert [(d.name, d.reason) for d in deferred[0].content] == [("child", "team")]
        assert [m.source for m in stream if isinstance(m, TextMessage)] == ["user", "outer"]
        await held.release()

    async def test_plain_nested_team_with_an_entry_is_leased_like_an_agent(self) -> None:
        """A RoundRobinGroupChat child with a capacities entry is leased by the parent for its turns."""
        ledger = InMemoryLedger()
        child = RoundRobinGroupChat([WorkerAgent("inner")], name="plain", max_turns=1)
        parent = CapacityAwareGroupChat(
            [child, WorkerAgent("outer")],
            capacities={"plain": AgentCapacity(max_concurrent=1)},
            ledger=ledger,
            max_turns=3,
        )
        await asyncio.wait_for(parent.run(task="go"), TIMEOUT)
        assert (await ledger.snapshot())["plain"].acquired == 2

    async def test_capacity_events_reach_a_plain_autogen_parent(self) -> None:
        """A plain AutoGen parent that lists CAPACITY_EVENT_TYPES relays a capacity-aware child's events."""
        ledger = InMemoryLedger()
        contract = AgentCapacity(max_concurrent=1)
        held = await ledger.try_acquire("busy", contract)
        assert held is not None
        child = CapacityAwareGroupChat(
            [WorkerAgent("busy"), WorkerAgent("free")],
            name="child",
            capacities={"busy": contract},
            ledger=ledger,
            max_turns=1,
            emit_team_events=True,
        )
        parent = RoundRobinGroupChat([child], max_turns=1, custom_message_types=list(CAPACITY_EVENT_TYPES))
        stream = [m async for m in parent.run_stream(task="go")]
        assert any(isinstance(m, CapacityDeferredEvent) for m in stream)
        await held.release()


class TestConfig:
    def test_round_trip_with_contracts_and_nested_teams(self) -> None:
        """dump -> load -> dump is unchanged, contracts and nested teams included, under our provider."""
        child = CapacityAwareGroupChat(
            [RoundRobinGroupChat([_assistant("inner")], max_turns=1)],
            name="child",
            capacity=AgentCapacity(max_concurrent=1, key="shared-child"),
            max_turns=1,
        )
        team = CapacityAwareGroupChat(
            [_assistant("a"), child],
            capacities={"a": AgentCapacity(max_concurrent=2, rpm=30, tpm=10_000, max_caller_retries=3)},
            routing="round_robin",
            on_exhausted="raise",
            termination_condition=MaxMessageTermination(5),
        )
        dumped = team.dump_component()
        assert dumped.provider == "autogen_capacity.CapacityAwareGroupChat"
        loaded = Team.load_component(json.loads(dumped.model_dump_json()))
        assert isinstance(loaded, CapacityAwareGroupChat)
        assert loaded.dump_component() == dumped
        assert loaded.capacity_of("a") == AgentCapacity(max_concurrent=2, rpm=30, tpm=10_000, max_caller_retries=3)

    def test_invalid_contract_in_config_names_the_field(self) -> None:
        """A config with a negative slot count fails with pydantic's error naming the member and field."""
        team = CapacityAwareGroupChat([_assistant("a")])
        config = team.dump_component().model_dump()
        config["config"]["capacities"] = {"a": {"max_concurrent": -1}}
        with pytest.raises(ValueError, match=r"capacities\.a\.max_concurrent"):
            CapacityAwareGroupChat.load_component(config)


async def test_tokens_are_debited_from_the_tpm_window() -> None:
    """Each response's models_usage is debited from its member's tpm window."""
    ledger = InMemoryLedger()
    team = CapacityAwareGroupChat(
        [WorkerAgent("a", tokens=40)], capacities={"a": AgentCapacity(tpm=1000)}, ledger=ledger, max_turns=3
    )
    await asyncio.wait_for(team.run(task="go"), TIMEOUT)
    assert (await ledger.snapshot())["a"].tokens_last_minute == 120


async def test_selector_func_speaker_is_waited_for_not_replaced() -> None:
    """A speaker named by selector_func is waited for even when another member has headroom."""
    ledger = InMemoryLedger()
    contract = AgentCapacity(max_concurrent=1, max_caller_retries=1, **SLOW)
    held = await ledger.try_acquire("a", contract)
    assert held is not None
    team = CapacityAwareGroupChat(
        [WorkerAgent("a"), WorkerAgent("b")],
        capacities={"a": contract},
        ledger=ledger,
        selector_func=lambda _thread: "a",
        max_turns=1,
        emit_team_events=True,
    )
    run = asyncio.ensure_future(team.run(task="go"))
    await asyncio.wait_for(until_waiting(ledger, "a"), TIMEOUT)
    await held.release()
    result = await asyncio.wait_for(run, TIMEOUT)
    spoke = [m.source for m in result.messages if isinstance(m, TextMessage)]
    assert spoke == ["user", "a"]


def _assistant(name: str) -> WorkerAgent:
    from autogen_agentchat.agents import AssistantAgent
    from autogen_ext.models.replay import ReplayChatCompletionClient

    return AssistantAgent(name, model_client=ReplayChatCompletionClient([f"{name} here"]))  # type: ignore[return-value]


async def _collect(team: CapacityAwareGroupChat) -> list[object]:
    return [item async for item in team.run_stream(task="go")]


@pytest.mark.parametrize("waits_for", ["member", "team"])
async def test_cancelling_a_wait_takes_nothing(waits_for: str) -> None:
    """A run cancelled while it waits for a member's slot or its team's own contract ends with CancelledError at
    once (not when the wait's deadline passes), leaves no waiter and holds nothing; the team runs again."""
    ledger = InMemoryLedger()
    contract = AgentCapacity(max_concurrent=1, **SLOW)
    key = "a" if waits_for == "member" else "solo"
    held = await ledger.try_acquire(key, contract)
    assert held is not None
    if waits_for == "member":
        team = CapacityAwareGroupChat([WorkerAgent("a")], capacities={"a": contract}, ledger=ledger, max_turns=1)
    else:
        team = CapacityAwareGroupChat([WorkerAgent("a")], name="solo", capacity=contract, ledger=ledger, max_turns=1)
    token = CancellationToken()
    run = asyncio.ensure_future(team.run(task="go", cancellation_token=token))
    await asyncio.wait_for(until_waiting(ledger, key), TIMEOUT)
    token.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(run, TIMEOUT)
    assert (await ledger.snapshot())[key].waiting == 0
    await held.release()
    assert await in_flight(ledger) == {}
    result = await asyncio.wait_for(team.run(task="again"), TIMEOUT)
    assert [m.source for m in result.messages] == ["user", "a"]


async def test_a_selector_func_that_cancels_the_run_selects_nobody() -> None:
    """A run whose token is cancelled during selection (here by the selector_func itself) ends with
    CancelledError: the speaker it named never runs and its lease is given back."""
    ledger = InMemoryLedger()
    token = CancellationToken()
    named = WorkerAgent("b")

    def cancel_and_name(thread: Sequence[BaseAgentEvent | BaseChatMessage]) -> str:
        token.cancel()
        return "b"

    team = CapacityAwareGroupChat(
        [WorkerAgent("a"), named],
        capacities={"b": AgentCapacity(max_concurrent=1)},
        selector_func=cancel_and_name,
        ledger=ledger,
        max_turns=2,
    )
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(team.run(task="go", cancellation_token=token), TIMEOUT)
    assert named.calls == 0
    assert await in_flight(ledger) == {}


class CallbackCountingToken(CancellationToken):
    """A cancellation token that counts what is attached to it (a callback stays until the token dies)."""

    def __init__(self) -> None:
        super().__init__()
        self.callbacks = 0
        self.links = 0

    @property
    def attached(self) -> int:
        return self.callbacks + self.links

    def add_callback(self, callback: Callable[[], None]) -> None:
        self.callbacks += 1
        super().add_callback(callback)

    def link_future(self, future: asyncio.Future[Any]) -> asyncio.Future[Any]:
        self.links += 1
        return super().link_future(future)


@pytest.mark.parametrize("routing", ["round_robin", "headroom"])
async def test_a_run_attaches_to_its_token_independently_of_its_length(routing: Routing) -> None:
    """What a run hangs on the caller's cancellation token (kept while the token lives) does not grow with its
    turns: AutoGen's teams link a future to it for every message they stream, their managers a speaker-selection
    task every turn."""
    attached = []
    for turns in (5, 40):
        token = CallbackCountingToken()
        team = CapacityAwareGroupChat(
            [WorkerAgent("a"), WorkerAgent("b")],
            capacities={"a": AgentCapacity(max_concurrent=1)},
            routing=routing,
            ledger=InMemoryLedger(),
            max_turns=turns,
        )
        result = await asyncio.wait_for(team.run(task="go", cancellation_token=token), TIMEOUT)
        assert len(result.messages) == turns + 1
        attached.append(token.attached)
    assert attached[0] == attached[1]


async def test_speaker_selection_attaches_to_a_run_token_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Within a run, the manager attaches one canceller of speaker selection to the run's token, not one a turn
    (the futures AutoGen links to it, one per message it streams, go when the run ends)."""
    run_tokens: list[CallbackCountingToken] = []

    class RunToken(CallbackCountingToken):
        def __init__(self) -> None:
            super().__init__()
            run_tokens.append(self)

    monkeypatch.setattr(team_module, "CancellationToken", RunToken)
    for turns in (5, 40):
        team = CapacityAwareGroupChat([WorkerAgent("a"), WorkerAgent("b")], ledger=InMemoryLedger(), max_turns=turns)
        await asyncio.wait_for(team.run(task="go", cancellation_token=CancellationToken()), TIMEOUT)
    assert [token.callbacks for token in run_tokens] == [1, 1]


async def test_a_run_token_goes_with_its_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller's token does not keep a finished run's own token (and what AutoGen linked to it) alive."""
    run_tokens: list[weakref.ref[CancellationToken]] = []

    class RunToken(CancellationToken):
        def __init__(self) -> None:
            super().__init__()
            run_tokens.append(weakref.ref(self))

    monkeypatch.setattr(team_module, "CancellationToken", RunToken)
    token = CancellationToken()
    team = CapacityAwareGroupChat([WorkerAgent("a")], ledger=InMemoryLedger(), max_turns=3)
    await asyncio.wait_for(team.run(task="go", cancellation_token=token), TIMEOUT)
    gc.collect()
    assert len(run_tokens) == 1
    assert run_tokens[0]() is None


async def test_reset_of_a_running_team_keeps_its_leases() -> None:
    """reset() on a running team is refused, as in AutoGen, and releases none of the run's leases."""
    ledger = InMemoryLedger()
    gate, probe = asyncio.Event(), ConcurrencyProbe()
    team = CapacityAwareGroupChat(
        [WorkerAgent("a", gate=gate, probe=probe)],
        capacities={"a": AgentCapacity(max_concurrent=1)},
        ledger=ledger,
        max_turns=1,
    )
    run = asyncio.ensure_future(team.run(task="go"))
    await asyncio.wait_for(probe.entered.wait(), TIMEOUT)
    with pytest.raises(RuntimeError):
        await team.reset()
    assert await in_flight(ledger) == {"a": 1}
    gate.set()
    await asyncio.wait_for(run, TIMEOUT)
    assert await in_flight(ledger) == {}


class PausableWorker(WorkerAgent):
    """A worker that records on_pause / on_resume."""

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.paused = 0
        self.resumed = 0

    async def on_pause(self, cancellation_token: CancellationToken) -> None:
        self.paused += 1

    async def on_resume(self, cancellation_token: CancellationToken) -> None:
        self.resumed += 1


async def test_pause_skips_a_nested_team_between_its_runs() -> None:
    """pause()/resume() reach the members while a nested team that already spoke is idle (AutoGen would hang)."""
    ledger, gate, probe = InMemoryLedger(), asyncio.Event(), ConcurrencyProbe()
    inner = PausableWorker("inner")
    child = CapacityAwareGroupChat([inner], name="child", ledger=ledger, max_turns=1)
    outer = PausableWorker("outer", gate=gate, probe=probe)
    parent = CapacityAwareGroupChat([child, outer], ledger=ledger, max_turns=2)
    run = asyncio.ensure_future(parent.run(task="go"))
    await asyncio.wait_for(probe.entered.wait(), TIMEOUT)  # the child has spoken; outer holds its turn
    await asyncio.wait_for(parent.pause(), TIMEOUT)
    await asyncio.wait_for(parent.resume(), TIMEOUT)
    assert (outer.paused, outer.resumed) == (1, 1)
    assert (inner.paused, inner.resumed) == (0, 0)  # the idle child was skipped
    gate.set()
    result = await asyncio.wait_for(run, TIMEOUT)
    assert [m.source for m in result.messages] == ["user", "inner", "outer"]


class TestLogging:
    async def test_silent_until_the_app_configures_logging(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A deferral logs nothing to the terminal when the app has not configured logging."""
        ledger = InMemoryLedger()
        contract = AgentCapacity(max_concurrent=1)
        held = await ledger.try_acquire("a", contract)
        assert held is not None
        team = CapacityAwareGroupChat(
            [WorkerAgent("a"), WorkerAgent("b")], capacities={"a": contract}, ledger=ledger, max_turns=1
        )
        await asyncio.wait_for(team.run(task="go"), TIMEOUT)
        captured = capsys.readouterr()
        assert (captured.out, captured.err) == ("", "")
        await held.release()

    async def test_deferral_is_a_key_value_log_event(self, caplog: pytest.LogCaptureFixture) -> None:
        """With the ``autogen_capacity`` logger at INFO, a deferral is logged with its team, reasons and speaker."""
        ledger = InMemoryLedger()
        contract = AgentCapacity(max_concurrent=1)
        held = await ledger.try_acquire("a", contract)
        assert held is not None
        team = CapacityAwareGroupChat(
            [WorkerAgent("a"), WorkerAgent("b")], name="crew", capacities={"a": contract}, ledger=ledger, max_turns=1
        )
        with caplog.at_level(logging.INFO, logger="autogen_capacity"):
            await asyncio.wait_for(team.run(task="go"), TIMEOUT)
        assert "autogen_capacity.deferred team='crew' deferred={'a': 'slots'} speaker='b'" in caplog.messages
        await held.release()


def test_a_key_named_after_a_member_counts_once() -> None:
    """Member c (no key: tracked as "c") and member d declaring key="c" share one backend: counted once."""
    team = CapacityAwareGroupChat(
        [WorkerAgent("c"), WorkerAgent("d")],
        capacities={"c": AgentCapacity(max_concurrent=4), "d": AgentCapacity(max_concurrent=4, key="c")},
    )

    assert team.capacity is not None
    assert team.capacity.max_concurrent == 4
