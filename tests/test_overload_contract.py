"""The contract under real overload (issue 12): no spinning, no giving up before the provider's word, and
what a turn taught is recorded before its slot is handed on."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from autogen_agentchat.agents import BaseChatAgent
from autogen_agentchat.base import Response, TaskResult
from autogen_agentchat.messages import BaseChatMessage, TextMessage
from autogen_core import CancellationToken
from autogen_core.models import RequestUsage

from autogen_capacity import (
    AgentCapacity,
    CapacityAwareAgentTool,
    CapacityAwareGroupChat,
    CapacityExhausted,
    InMemoryLedger,
)
from autogen_capacity.testing import count_admission_passes
from faults import RateLimitError, quota_error
from ticker import Ticker

TIMEOUT = 30.0


class ScriptedMember(BaseChatAgent):
    """Raises the scripted errors in turn (after ``gate``, when given), then answers; records when each call
    started and, for an error, when it was raised."""

    def __init__(
        self,
        name: str,
        errors: Sequence[BaseException] = (),
        *,
        capacity: AgentCapacity | None = None,
        delay: float = 0.0,
        tokens: int = 0,
        gate: asyncio.Event | None = None,
    ) -> None:
        super().__init__(name, description=f"Member {name}.")
        self._errors = list(errors)
        self._delay = delay
        self._tokens = tokens
        self._gate = gate
        self.started = asyncio.Event()
        self.calls: list[float] = []
        self.raised: list[float] = []
        if capacity is not None:
            self.capacity = capacity

    @property
    def produced_message_types(self) -> Sequence[type[BaseChatMessage]]:
        return (TextMessage,)

    async def on_messages(self, messages: Sequence[BaseChatMessage], cancellation_token: CancellationToken) -> Response:
        loop = asyncio.get_running_loop()
        self.calls.append(loop.time())
        self.started.set()
        if self._gate is not None:
            await self._gate.wait()
        if self._delay:
            await asyncio.sleep(self._delay)
        if self._errors:
            self.raised.append(loop.time())
            raise self._errors.pop(0)
        usage = RequestUsage(prompt_tokens=self._tokens, completion_tokens=0) if self._tokens else None
        return Response(chat_message=TextMessage(content=f"{self.name} ok", source=self.name, models_usage=usage))

    async def on_reset(self, cancellation_token: CancellationToken) -> None:
        pass


def throttled(retry_after_s: float) -> RateLimitError:
    return RateLimitError(429, headers={"retry-after": str(retry_after_s)})


def short_schedule(**limits: object) -> AgentCapacity:
    """A schedule that sums to about 0.1 s: far shorter than the providers' hints in these tests."""
    fields: dict[str, object] = {
        "backoff_initial_ms": 10,
        "backoff_ceiling_ms": 40,
        "backoff_jitter": False,
        "max_caller_retries": 3,
        **limits,
    }
    return AgentCapacity.model_validate(fields)


async def queued(ledger: InMemoryLedger, key: str, waiting: int = 1) -> None:
    """Until ``waiting`` callers wait for ``key`` (polled on the loop, bounded by TIMEOUT)."""

    async def _poll() -> None:
        # The ledger has no event for "someone queued": poll its snapshot, bounded by TIMEOUT.
        while (usage := (await ledger.snapshot()).get(key)) is None or usage.waiting < waiting:  # noqa: ASYNC110
            await asyncio.sleep(0.001)

    await asyncio.wait_for(_poll(), TIMEOUT)


class TestNoSpin:
    async def test_nested_teams_under_contention_never_stall_the_loop(self, ledger: InMemoryLedger) -> None:
        """16 parents [inner(max 2) over a, b (max 1 each), z (max 1)] finish with a responsive loop and a
        bounded number of admission passes per admission (finding 1: a parent busy-waited on the child)."""
        one = short_schedule(max_concurrent=1, max_caller_retries=50)

        def parent(i: int) -> CapacityAwareGroupChat:
            inner = CapacityAwareGroupChat(
                [ScriptedMember("a", delay=0.02), ScriptedMember("b", delay=0.02)],
                name="inner",
                capacity=short_schedule(max_concurrent=2, max_caller_retries=50),
                capacities={"a": one, "b": one},
                ledger=ledger,
                max_turns=1,
            )
            return CapacityAwareGroupChat(
                [inner, ScriptedMember("z", delay=0.02)],
                name=f"parent{i}",
                capacities={"z": one},
                ledger=ledger,
                max_turns=4,
            )

        parents = [parent(i) for i in range(16)]  # built before the ticker starts: building is not running
        with Ticker(asyncio.get_running_loop(), period=0.005) as ticker, count_admission_passes() as passes:
            runs = [asyncio.ensure_future(team.run(task="go")) for team in parents]
            done, _ = await asyncio.wait(runs, timeout=TIMEOUT)
        assert len(done) == 16
        for run in runs:
            stop = run.result().stop_reason
            assert stop is not None
            assert stop.startswith("Maximum number of turns"), stop
        assert ticker.longest < 0.25
        assert passes.admissions >= 16 * 4
        assert passes.most_in_one_admission <= 60
        assert all(usage.in_flight == 0 for usage in (await ledger.snapshot()).values())


class TestProviderWord:
    async def test_team_waits_out_a_retry_after_longer_than_its_schedule(self, ledger: InMemoryLedger) -> None:
        """Both members answer 429 with Retry-After 0.3 s; the schedule sums to 0.1 s: the team waits for the
        provider, not for its schedule, and no request reaches a member inside its window (finding 2)."""
        a = ScriptedMember("a", [throttled(0.3)])
        b = ScriptedMember("b", [throttled(0.3)])
        contract = short_schedule(max_concurrent=1)
        team = CapacityAwareGroupChat([a, b], capacities={"a": contract, "b": contract}, ledger=ledger, max_turns=1)

        result = await asyncio.wait_for(team.run(task="go"), TIMEOUT)

        assert result.stop_reason == "Maximum number of turns 1 reached."
        assert [m.source for m in result.messages] == ["user", "a"]
        for member in (a, b):
            for raised, later in zip(member.raised, member.calls[1:], strict=False):
                assert later - raised >= 0.3 - 0.01

    async def test_cooldown_beyond_the_contracts_bound_ends_at_once(self, ledger: InMemoryLedger) -> None:
        """A Retry-After beyond ``max_retry_after_ms`` is not waited out: the run ends now, saying when to
        come back."""
        a = ScriptedMember("a", [throttled(120)])
        team = CapacityAwareGroupChat(
            [a],
            capacities={"a": short_schedule(max_concurrent=1, max_retry_after_ms=1000)},
            ledger=ledger,
            max_turns=1,
        )

        result = await asyncio.wait_for(team.run(task="go"), TIMEOUT)

        assert result.stop_reason is not None
        assert result.stop_reason.startswith("Capacity exhausted")
        assert "wait 120.0s" in result.stop_reason
        assert len(a.calls) == 1

    async def test_the_raised_error_says_when_to_come_back(self, ledger: InMemoryLedger) -> None:
        """With ``on_exhausted="raise"``, the error carries the provider's wait as ``retry_after``."""
        team = CapacityAwareGroupChat(
            [ScriptedMember("a", [throttled(120)])],
            capacities={"a": short_schedule(max_concurrent=1, max_retry_after_ms=1000)},
            ledger=ledger,
            max_turns=1,
            on_exhausted="raise",
        )

        with pytest.raises(CapacityExhausted) as raised:
            await asyncio.wait_for(team.run(task="go"), TIMEOUT)

        assert raised.value.retry_after == pytest.approx(120, abs=1)


async def _second_waits_for_first(
    ledger: InMemoryLedger, first: ScriptedMember, second: ScriptedMember, gate: asyncio.Event
) -> list[TaskResult]:
    """Two teams on one backend: ``first``'s member takes the slot and holds it at ``gate``; ``second``'s team
    queues for the slot; then ``first`` answers. Both runs' results."""
    t1 = CapacityAwareGroupChat([first], name="t1", ledger=ledger, max_turns=1)
    t2 = CapacityAwareGroupChat([second], name="t2", ledger=ledger, max_turns=1)
    run1 = asyncio.ensure_future(t1.run(task="go"))
    await asyncio.wait_for(first.started.wait(), TIMEOUT)
    run2 = asyncio.ensure_future(t2.run(task="go"))
    await queued(ledger, "backend")
    gate.set()
    return list(await asyncio.wait_for(asyncio.gather(run1, run2), TIMEOUT))


class TestRecordBeforeRelease:
    async def test_a_429_is_recorded_before_its_slot_is_handed_on(self, ledger: InMemoryLedger) -> None:
        """A waiting team is not handed the slot of a turn that answered 429 before the cooldown is in the
        ledger: its request never lands inside the provider's window (finding 3)."""
        gate = asyncio.Event()
        shared = short_schedule(max_concurrent=1, key="backend", max_caller_retries=20)
        first = ScriptedMember("first", [throttled(0.3)], capacity=shared, gate=gate)
        second = ScriptedMember("second", capacity=shared)

        await _second_waits_for_first(ledger, first, second, gate)

        assert second.calls
        assert second.calls[0] - first.raised[0] >= 0.3 - 0.01

    async def test_a_spent_quota_is_recorded_before_its_slot_is_handed_on(self, ledger: InMemoryLedger) -> None:
        """After an ``insufficient_quota`` answer, no other team reaches the same backend (finding 3)."""
        gate = asyncio.Event()
        shared = short_schedule(max_concurrent=1, key="backend", max_caller_retries=20)
        first = ScriptedMember("first", [quota_error()], capacity=shared, gate=gate)
        second = ScriptedMember("second", capacity=shared)

        results = await _second_waits_for_first(ledger, first, second, gate)

        assert second.calls == []
        assert all(r.stop_reason is not None and r.stop_reason.startswith("Capacity exhausted") for r in results)

    async def test_tokens_are_debited_before_the_slot_is_handed_on(self, ledger: InMemoryLedger) -> None:
        """The tokens a turn used are in the tpm window before its slot goes to the next team (finding 4)."""
        gate = asyncio.Event()
        shared = short_schedule(max_concurrent=1, tpm=100, key="backend")
        first = ScriptedMember("first", capacity=shared, tokens=100, gate=gate)
        second = ScriptedMember("second", capacity=shared, tokens=100)

        result1, result2 = await _second_waits_for_first(ledger, first, second, gate)

        assert result1.stop_reason == "Maximum number of turns 1 reached."
        assert second.calls == []
        assert result2.stop_reason is not None
        assert result2.stop_reason.startswith("Capacity exhausted")
        assert (await ledger.snapshot())["backend"].tokens_last_minute == 100

    async def test_the_agent_tool_debits_tokens(self, ledger: InMemoryLedger) -> None:
        """A capacity-aware tool records the tokens its target used in the key's tpm window."""
        agent = ScriptedMember("helper", tokens=42)
        tool = CapacityAwareAgentTool(agent, capacity=AgentCapacity(tpm=1000), ledger=ledger)

        result = await tool.run_json({"task": "go"}, CancellationToken())

        assert isinstance(result, TaskResult)
        assert (await ledger.snapshot())["helper"].tokens_last_minute == 42


@pytest.mark.parametrize("seconds", [0.3])
async def test_tool_and_team_wait_alike(ledger: InMemoryLedger, seconds: float) -> None:
    """The capacity-aware tool and the team follow the same Retry-After (one engine)."""
    agent = ScriptedMember("helper", [throttled(seconds)])
    tool = CapacityAwareAgentTool(agent, capacity=short_schedule(max_concurrent=1), ledger=ledger)

    await asyncio.wait_for(tool.run_json({"task": "go"}, CancellationToken()), TIMEOUT)

    assert agent.calls[1] - agent.raised[0] >= seconds - 0.01
