"""A caller cancelled in the loop pass in which its waiting admission is handed a slot gives the lease back.

The team's run (its own key) and the capacity-aware model client admit in a task of their own, linked to the
caller's cancellation token. When the caller is cancelled after that task was granted its lease but before the
caller resumed (``asyncio.timeout`` or ``wait_for`` around ``run()`` or ``create()`` firing in the same pass as
the hand-over), the lease must not be lost: nobody else holds it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from autogen_core.models import UserMessage
from autogen_ext.models.replay import ReplayChatCompletionClient

from agents import WorkerAgent
from autogen_capacity import AgentCapacity, CapacityAwareChatCompletionClient, CapacityAwareGroupChat, InMemoryLedger
from autogen_capacity.testing import settle

_CAP = AgentCapacity(max_concurrent=1, backoff_initial_ms=5_000, backoff_ceiling_ms=5_000, max_caller_retries=1)


async def _in_flight(ledger: InMemoryLedger, key: str) -> int:
    usage = (await ledger.snapshot()).get(key)
    return usage.in_flight if usage is not None else 0


async def _team_run(ledger: InMemoryLedger) -> object:
    team = CapacityAwareGroupChat([WorkerAgent("a")], name="solo", capacity=_CAP, ledger=ledger, max_turns=1)
    return await team.run(task="go")


async def _model_call(ledger: InMemoryLedger) -> object:
    client = CapacityAwareChatCompletionClient(ReplayChatCompletionClient(["hi"]), _CAP, key="solo", ledger=ledger)
    return await client.create([UserMessage(content="x", source="user")])


@pytest.mark.parametrize("call", [_team_run, _model_call], ids=["team_run", "model_call"])
async def test_a_lease_granted_to_a_caller_cancelled_in_the_same_pass_is_given_back(
    call: Callable[[InMemoryLedger], Awaitable[object]],
) -> None:
    ledger = InMemoryLedger()
    holder = await ledger.try_acquire("solo", _CAP)
    assert holder is not None
    caller = asyncio.ensure_future(call(ledger))
    await settle()
    assert (await ledger.snapshot())["solo"].waiting == 1

    await holder.release()  # handed over to the caller's admission, which takes it on its next pass
    for _ in range(20):  # one loop pass at a time
        await asyncio.sleep(0)
        if await _in_flight(ledger, "solo"):
            break
    else:
        pytest.fail("the waiting admission never took the slot it was handed")
    caller.cancel()  # the admission has its lease; the caller has not resumed yet
    with pytest.raises(asyncio.CancelledError):
        await caller

    assert await _in_flight(ledger, "solo") == 0
    assert await ledger.try_acquire("solo", _CAP) is not None
