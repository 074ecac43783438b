"""A ledger that fails mid-run: the run ends with the ledger's typed error, at the first admission and mid-run
alike, with nothing left in flight."""

from __future__ import annotations

import asyncio

import pytest
from autogen_core import SingleThreadedAgentRuntime

from agents import ConcurrencyProbe, WorkerAgent
from autogen_capacity import AgentCapacity, CapacityAwareGroupChat, InMemoryLedger, LedgerUnavailable
from autogen_capacity.ledger import KeyStatus, Lease
from faults import FaultyMember

TIMEOUT = 30.0


class FailingLedger(InMemoryLedger):
    """An in-memory ledger whose ``operation`` raises ``LedgerUnavailable`` from its ``fail_at``-th call on."""

    def __init__(self, operation: str, fail_at: int) -> None:
        super().__init__()
        self.operation = operation
        self.fail_at = fail_at
        self.calls = 0

    def _count(self, operation: str) -> None:
        if operation == self.operation:
            self.calls += 1
            if self.calls >= self.fail_at:
                raise LedgerUnavailable("Redis ledger unreachable at redis://127.0.0.1:1: Connection refused")

    async def acquire_or_status(
        self, key: str, capacity: AgentCapacity, *, idle_only: bool = False
    ) -> Lease | KeyStatus:
        self._count("acquire_or_status")
        return await super().acquire_or_status(key, capacity, idle_only=idle_only)

    async def record_tokens(self, key: str, tokens: int) -> None:
        self._count("record_tokens")
        await super().record_tokens(key, tokens)

    async def cooldown(self, key: str, seconds: float) -> None:
        self._count("cooldown")
        await super().cooldown(key, seconds)


@pytest.mark.parametrize(
    ("operation", "fail_at"),
    [("acquire_or_status", 1), ("acquire_or_status", 3), ("record_tokens", 2)],
    ids=["first admission", "mid-run admission", "recording a turn's tokens"],
)
async def test_a_ledger_failure_ends_the_run_with_its_typed_error(operation: str, fail_at: int) -> None:
    """Whenever the ledger fails, ``run()`` raises ``LedgerUnavailable`` (not AutoGen's ``RuntimeError``), with
    nothing left in flight."""
    ledger = FailingLedger(operation, fail_at)
    contract = AgentCapacity(max_concurrent=1, tpm=10_000)
    team = CapacityAwareGroupChat(
        [WorkerAgent("a", tokens=5), WorkerAgent("b", tokens=5)],
        capacities={"a": contract, "b": contract},
        ledger=ledger,
        max_turns=6,
    )

    with pytest.raises(LedgerUnavailable, match="unreachable"):
        await asyncio.wait_for(team.run(task="go"), TIMEOUT)

    ledger.fail_at = 10**9
    assert all(usage.in_flight == 0 for usage in (await ledger.snapshot()).values())
    result = await asyncio.wait_for(team.run(task="again"), TIMEOUT)  # the team is usable again
    assert result.stop_reason is not None


async def test_a_nested_teams_ledger_failure_reaches_the_parents_caller_typed() -> None:
    """A nested team's run that fails on its ledger ends the parent's run with ``LedgerUnavailable`` too."""
    ledger = FailingLedger("acquire_or_status", 1)
    child = CapacityAwareGroupChat(
        [WorkerAgent("inner")], name="child", capacities={"inner": AgentCapacity(max_concurrent=1)}, ledger=ledger
    )
    parent = CapacityAwareGroupChat([child], ledger=InMemoryLedger(), max_turns=2)

    with pytest.raises(LedgerUnavailable):
        await asyncio.wait_for(parent.run(task="go"), TIMEOUT)


async def test_a_ledger_failure_recording_an_overload_ends_the_run_typed(
    runtime: SingleThreadedAgentRuntime | None,
) -> None:
    """A member answers 429 and the ledger fails recording its cooldown: the run ends with ``LedgerUnavailable``
    on AutoGen's embedded runtime and on a shared one alike (on a shared runtime it waited forever for a turn
    whose failure nobody reported), with nothing left in flight."""
    ledger = FailingLedger("cooldown", 1)
    member = FaultyMember("a", probe=ConcurrencyProbe())
    member.faults.append("429")
    team = CapacityAwareGroupChat(
        [member, WorkerAgent("b")],
        capacities={"a": AgentCapacity(max_concurrent=1), "b": AgentCapacity(max_concurrent=1)},
        ledger=ledger,
        max_turns=4,
        runtime=runtime,
    )

    with pytest.raises(LedgerUnavailable, match="unreachable"):
        await asyncio.wait_for(team.run(task="go"), 10)

    assert all(usage.in_flight == 0 for usage in (await ledger.snapshot()).values())
