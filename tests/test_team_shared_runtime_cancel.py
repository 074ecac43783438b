"""A run cancelled on a shared runtime leaves its member's turn running: that turn keeps its slot until it ends.

With ``runtime=`` AutoGen ends a cancelled run without waiting for the member's handler, which the runtime does not
cancel (a member that does not watch the token, a blocking tool call). The turn still occupies its backend, so its
lease must stay held until the turn ends, and that turn's end must release its own lease, not the one a later run
of the same team took for the same member. A request the run published but the runtime had not delivered when the
run ended is still delivered: it starts no turn (the run that admitted it is over and freed its slot).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from autogen_agentchat.agents import BaseChatAgent
from autogen_agentchat.base import Response
from autogen_agentchat.messages import BaseChatMessage, TextMessage
from autogen_agentchat.teams._group_chat._events import GroupChatRequestPublish
from autogen_core import CancellationToken, SingleThreadedAgentRuntime

from autogen_capacity import AgentCapacity, CapacityAwareGroupChat, InMemoryLedger
from faults import RateLimitError

_CAP = AgentCapacity(max_concurrent=1)


class _Gated(BaseChatAgent):
    """Records the slots in flight on its key when each turn starts, then answers once ``gate`` opens (it does not
    watch the cancellation token), "done N" on its N-th turn."""

    def __init__(self, name: str, ledger: InMemoryLedger) -> None:
        super().__init__(name, description=name)
        self._ledger = ledger
        self.started = asyncio.Event()
        self.gate = asyncio.Event()
        self.in_flight_at_start: list[int] = []

    @property
    def produced_message_types(self) -> Sequence[type[BaseChatMessage]]:
        return (TextMessage,)

    async def on_messages(self, messages: Sequence[BaseChatMessage], cancellation_token: CancellationToken) -> Response:
        self.in_flight_at_start.append((await self._ledger.snapshot())[self.name].in_flight)
        self.started.set()
        await self.gate.wait()
        return Response(chat_message=TextMessage(content=f"done {len(self.in_flight_at_start)}", source=self.name))

    async def on_reset(self, cancellation_token: CancellationToken) -> None:
        pass


async def _cancel_mid_turn(team: CapacityAwareGroupChat, member: _Gated) -> None:
    """Run ``team`` and cancel the run once ``member``'s turn has started (the turn goes on: it ignores the token)."""
    token = CancellationToken()
    run = asyncio.ensure_future(team.run(task="go", cancellation_token=token))
    await asyncio.wait_for(member.started.wait(), 10)
    token.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(run, 10)


async def test_a_turn_left_running_by_a_cancelled_run_keeps_its_slot_and_frees_only_its_own() -> None:
    runtime = SingleThreadedAgentRuntime()
    runtime.start()
    ledger = InMemoryLedger()
    member = _Gated("a", ledger)
    team = CapacityAwareGroupChat(
        [member], capacities={"a": _CAP}, ledger=ledger, max_turns=1, runtime=runtime, name="shared"
    )
    try:
        await _cancel_mid_turn(team, member)

        assert (await ledger.snapshot())["a"].in_flight == 1  # the turn still runs at its backend
        assert await ledger.try_acquire("a", _CAP) is None

        second = asyncio.ensure_future(team.run(task="again"))  # waits for the slot the old turn holds
        member.gate.set()  # the old turn ends and frees its own slot; the second run's turn takes it
        result = await asyncio.wait_for(second, 10)

        assert member.in_flight_at_start == [1, 1]  # every turn ran leased
        # The run ends on its own turn's answer, not the old turn's (which AutoGen still streams into it).
        assert result.messages[-1].content == "done 2"
        assert (await ledger.snapshot())["a"].in_flight == 0
    finally:
        member.gate.set()
        await runtime.stop_when_idle()


class _Request:
    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.handled = asyncio.Event()


class _HeldRequests(SingleThreadedAgentRuntime):
    """Holds each member request until the test lets it through (the runtime's delivery latency, made explicit),
    and says when its handler returned."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: asyncio.Queue[_Request] = asyncio.Queue()

    async def _process_publish(self, message_envelope: Any) -> None:
        if not isinstance(message_envelope.message, GroupChatRequestPublish):
            await super()._process_publish(message_envelope)
            return
        request = _Request()
        await self.requests.put(request)
        await request.gate.wait()
        await super()._process_publish(message_envelope)
        request.handled.set()


@pytest.mark.parametrize("ended_by", ["token", "task"])
async def test_a_request_delivered_after_its_run_ended_starts_no_turn(ended_by: str) -> None:
    """The run ends (its token cancelled, or the task awaiting it cancelled) after its manager admitted the member
    and published the request: the run frees the slot, and the request the runtime delivers after starts no
    turn, so nobody works unleased while another caller holds the member's only slot."""
    runtime = _HeldRequests()
    runtime.start()
    ledger = InMemoryLedger()
    member = _Gated("a", ledger)
    team = CapacityAwareGroupChat([member], capacities={"a": _CAP}, ledger=ledger, max_turns=1, runtime=runtime)
    try:
        token = CancellationToken()
        run = asyncio.ensure_future(team.run(task="go", cancellation_token=token if ended_by == "token" else None))
        request = await asyncio.wait_for(runtime.requests.get(), 10)
        assert (await ledger.snapshot())["a"].in_flight == 1
        if ended_by == "token":
            token.cancel()
        else:
            run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(run, 10)
        other = await ledger.try_acquire("a", _CAP)  # the slot is free again: another caller takes it
        assert other is not None

        request.gate.set()
        await asyncio.wait_for(request.handled.wait(), 10)
        assert not member.started.is_set()
        assert (await ledger.snapshot())["a"].in_flight == 1  # only the other caller's
        await other.release()
    finally:
        member.gate.set()
        await runtime.stop_when_idle()


async def test_a_stale_request_does_not_take_the_next_runs_lease() -> None:
    """The stale request of a cancelled run arrives after the next run admitted the same member: it starts no turn
    and takes nothing; the next run's turn runs under its own lease."""
    runtime = _HeldRequests()
    runtime.start()
    ledger = InMemoryLedger()
    member = _Gated("a", ledger)
    member.gate.set()
    team = CapacityAwareGroupChat([member], capacities={"a": _CAP}, ledger=ledger, max_turns=1, runtime=runtime)
    try:
        token = CancellationToken()
        first = asyncio.ensure_future(team.run(task="go", cancellation_token=token))
        stale = await asyncio.wait_for(runtime.requests.get(), 10)
        token.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(first, 10)

        second = asyncio.ensure_future(team.run(task="again"))
        current = await asyncio.wait_for(runtime.requests.get(), 10)
        stale.gate.set()  # delivered first
        current.gate.set()
        result = await asyncio.wait_for(second, 10)

        assert [m.content for m in result.messages] == ["again", "done 1"]
        assert member.in_flight_at_start == [1]  # one turn, the second run's, under its own lease
        assert (await ledger.snapshot())["a"].in_flight == 0
    finally:
        await runtime.stop_when_idle()


class _ThrottledOnce(_Gated):
    """Its first turn answers 429 once ``gate`` opens; later turns answer."""

    def __init__(self, name: str, ledger: InMemoryLedger) -> None:
        super().__init__(name, ledger)
        self.turns = 0

    async def on_messages(self, messages: Sequence[BaseChatMessage], cancellation_token: CancellationToken) -> Response:
        self.turns += 1
        response = await super().on_messages(messages, cancellation_token)
        if self.turns == 1:
            raise RateLimitError(429, headers={"retry-after-ms": "1"})
        return response


async def test_an_overload_reported_after_its_run_ended_leaves_the_next_run_alone() -> None:
    """A turn left running by a cancelled run answers 429 while the next run waits for its slot: the overload is
    recorded (the key cools down) but it is not the next run's turn to reroute; that run's own turn answers."""
    runtime = SingleThreadedAgentRuntime()
    runtime.start()
    ledger = InMemoryLedger()
    member = _ThrottledOnce("a", ledger)
    team = CapacityAwareGroupChat([member], capacities={"a": _CAP}, ledger=ledger, max_turns=1, runtime=runtime)
    try:
        await _cancel_mid_turn(team, member)

        second = asyncio.ensure_future(team.run(task="again"))
        member.gate.set()  # the old turn answers 429 and frees its slot; the second run's turn takes it
        result = await asyncio.wait_for(second, 10)

        assert [m.content for m in result.messages] == ["again", "done 2"]
        assert member.turns == 2
        assert (await ledger.snapshot())["a"].in_flight == 0
    finally:
        member.gate.set()
        await runtime.stop_when_idle()


class _TokenKeeper(_Gated):
    """Keeps the token each turn is given."""

    def __init__(self, name: str, ledger: InMemoryLedger) -> None:
        super().__init__(name, ledger)
        self.tokens: list[CancellationToken] = []

    async def on_messages(self, messages: Sequence[BaseChatMessage], cancellation_token: CancellationToken) -> Response:
        self.tokens.append(cancellation_token)
        return await super().on_messages(messages, cancellation_token)


@pytest.mark.parametrize("yours", [True, False])
async def test_the_token_members_see_is_cancelled_when_their_run_ends(
    runtime: SingleThreadedAgentRuntime | None, yours: bool
) -> None:
    """A run that ends normally cancels the token its members were given (with or without a token of yours, which
    stays as it was): work a member tied to it stops with its run."""
    ledger = InMemoryLedger()
    member = _TokenKeeper("a", ledger)
    member.gate.set()
    team = CapacityAwareGroupChat([member], capacities={"a": _CAP}, ledger=ledger, max_turns=1, runtime=runtime)
    token = CancellationToken() if yours else None
    result = await team.run(task="go", cancellation_token=token)

    assert result.stop_reason == "Maximum number of turns 1 reached."
    assert [given.is_cancelled() for given in member.tokens] == [True]
    assert token is None or not token.is_cancelled()
