"""Use the public API with type annotations, so ``mypy --strict`` checks what users will write.

This module is type-checked, never run: pytest does not collect it (no ``test_`` prefix).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping

from autogen_capacity import (
    AgentCapacity,
    AggregateMode,
    BlockReason,
    CapacityError,
    CapacityExhausted,
    CapacityLedger,
    ContractError,
    InMemoryLedger,
    KeyStatus,
    KeyUsage,
    Lease,
    LedgerClosed,
    LedgerSnapshot,
    LedgerUnavailable,
    Overloaded,
    QueueFull,
    acquire,
    default_ledger,
    lease,
)
from autogen_capacity.backoff import BackoffStrategy, compute_delay, jittered
from autogen_capacity.testing import FakeLoopClock, settle

# The proposal's call, verbatim.
proposal = AgentCapacity(
    max_concurrent=3,
    backoff_strategy="exponential",
    backoff_initial_ms=1000,
    backoff_ceiling_ms=30000,
    max_caller_retries=5,
)
rated = AgentCapacity(rpm=6, tpm=10_000, max_queue=4, key="shared-backend", backoff_jitter=False)
from_dict: AgentCapacity = AgentCapacity.model_validate({"max_concurrent": 2})
from_json: AgentCapacity = AgentCapacity.model_validate_json('{"rpm": 0.5}')

slots: int | None = proposal.max_concurrent
rpm: float | None = rated.rpm
tpm: int | None = rated.tpm
key: str | None = rated.key
strategy: BackoffStrategy = proposal.backoff_strategy
bounded: bool = proposal.is_bounded
schedule: tuple[float, ...] = proposal.backoff_schedule()
first_delay: float = proposal.delay(1)
jittered_first: float = proposal.jittered_delay(1, random.Random(0))
jittered_default: float = proposal.jittered_delay(2)

mode: AggregateMode = "pipeline"
team: AgentCapacity | None = AgentCapacity.aggregate([proposal, rated, None], mode, cap=AgentCapacity(max_concurrent=2))
pool: AgentCapacity | None = AgentCapacity.aggregate(c for c in (proposal, rated))

delay: float = compute_delay(3, strategy="linear", initial=0.5, ceiling=10.0)
exp_delay: float = compute_delay(3, strategy="exponential", initial=0.5, ceiling=10.0, multiplier=1.5)
spread: float = jittered(delay, random.Random(0))

reason: BlockReason | None = KeyStatus(0.0, "slots").blocked_by
usage = KeyUsage(in_flight=1, waiting=2, acquired=3, tokens_last_minute=4)


async def use_ledger(ledger: CapacityLedger) -> None:
    held: Lease | None = await ledger.try_acquire("model", proposal)
    status: KeyStatus = await ledger.status("model", proposal)
    ready_in: float | None = status.ready_in
    headroom: float = await ledger.headroom("model", proposal)
    woken: bool = await ledger.wait_for_change({"model": proposal, "tool": rated}, timeout=ready_in or 1.0)
    await ledger.record_tokens("model", 120)
    await ledger.cooldown("model", 2.5)
    await ledger.mark_exhausted("model", 3600)
    snapshot: LedgerSnapshot = await ledger.snapshot()
    per_key: Mapping[str, KeyUsage] = snapshot
    in_flight: int = per_key["model"].in_flight
    cooling: float = per_key["model"].cooling_down_for
    if held is not None:
        async with held as same:
            lease_key: str = same.key
            since: float = same.acquired_at
        released: bool = held.released
        await held.release()
    print(headroom, woken, in_flight, cooling, lease_key, since, released)  # noqa: T201
    await ledger.aclose()


async def use_admission() -> None:
    memory: InMemoryLedger = InMemoryLedger()
    shared: InMemoryLedger = default_ledger()
    ledger: CapacityLedger = memory
    held: Lease = await acquire("model", proposal, ledger=ledger)
    await held.release()
    async with lease("model", proposal, ledger=shared) as inner:
        assert not inner.released
    try:
        await acquire("model", rated)
    except QueueFull as full:
        after: float | None = full.retry_after
        print(after)  # noqa: T201
    except CapacityExhausted as exhausted:
        keys: Mapping[str, object] = exhausted.snapshot
        print(keys)  # noqa: T201
    except (LedgerClosed, LedgerUnavailable, ContractError) as error:
        base: CapacityError = error
        print(base)  # noqa: T201


def raise_overloaded() -> None:
    raise Overloaded("busy", retry_after=1.5, kind="throttled")


async def use_testing() -> None:
    with FakeLoopClock(start=1000.0) as clock:
        now: float = clock.time()
        task: asyncio.Task[None] = asyncio.create_task(use_admission())
        clock.advance(10)
        await settle(task)
        await settle(task, rounds=5)
        print(now)  # noqa: T201
    with FakeLoopClock(asyncio.get_running_loop()):
        pass
