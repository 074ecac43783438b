"""A run cancelled on a shared runtime leaves its member's turn running: that turn keeps its slot until it ends.

With ``runtime=`` AutoGen ends a cancelled run without waiting for the member's handler, which the runtime does not
cancel (a member that does not watch the token, a blocking tool call). The turn still occupies its backend, so its
lease must stay held until the turn ends, and that turn's end must release its own lease, not the one a later run
of the same team took for the same member.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from autogen_agentchat.agents import BaseChatAgent
from autogen_agentchat.base import Response
from autogen_agentchat.messages import BaseChatMessage, TextMessage
from autogen_core import CancellationToken, SingleThreadedAgentRuntime

from autogen_capacity import AgentCapacity, CapacityAwareGroupChat, InMemoryLedger

_CAP = AgentCapacity(max_concurrent=1)


class _Gated(BaseChatAgent):
    """Records the slots in flight on its key when each turn starts, then answers once ``gate`` opens (it does not
    watch the cancellation token)."""

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
        return Response(chat_message=TextMessage(content="done", source=self.name))

    async def on_reset(self, cancellation_token: CancellationToken) -> None:
        pass


async def test_a_turn_left_running_by_a_cancelled_run_keeps_its_slot_and_frees_only_its_own() -> None:
    runtime = SingleThreadedAgentRuntime()
    runtime.start()
    ledger = InMemoryLedger()
    member = _Gated("a", ledger)
    team = CapacityAwareGroupChat(
        [member], capacities={"a": _CAP}, ledger=ledger, max_turns=1, runtime=runtime, name="shared"
    )
    try:
        token = CancellationToken()
        first = asyncio.ensure_future(team.run(task="go", cancellation_token=token))
        await asyncio.wait_for(member.started.wait(), 10)
        token.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(first, 10)

        assert (await ledger.snapshot())["a"].in_flight == 1  # the turn still runs at its backend
        assert await ledger.try_acquire("a", _CAP) is None

        second = asyncio.ensure_future(team.run(task="again"))  # waits for the slot the old turn holds
        member.gate.set()  # the old turn ends and frees its own slot; the second run's turn takes it
        await asyncio.wait_for(second, 10)

        assert member.in_flight_at_start == [1, 1]  # every turn ran leased
        assert (await ledger.snapshot())["a"].in_flight == 0
    finally:
        member.gate.set()
        await runtime.stop_when_idle()
