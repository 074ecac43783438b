"""Following a contract from the caller's side: acquire() and lease() wait by the backoff schedule."""

from __future__ import annotations

import asyncio

import pytest

from autogen_capacity import (
    AgentCapacity,
    CapacityExhausted,
    InMemoryLedger,
    Lease,
    QueueFull,
    acquire,
    default_ledger,
    lease,
)
from autogen_capacity.testing import FakeLoopClock, settle


def one_slot(**backoff: object) -> AgentCapacity:
    """One slot, and an un-jittered constant 10 s backoff unless told otherwise."""
    fields: dict[str, object] = {
        "max_concurrent": 1,
        "backoff_strategy": "constant",
        "backoff_initial_ms": 10_000,
        "backoff_ceiling_ms": 10_000,
        "backoff_jitter": False,
        "max_caller_retries": 3,
    }
    return AgentCapacity.model_validate({**fields, **backoff})


async def hold(ledger: InMemoryLedger, cap: AgentCapacity, key: str = "k") -> Lease:
    held = await ledger.try_acquire(key, cap)
    assert held is not None
    return held


class TestAcquire:
    async def test_returns_at_once_with_headroom(self, ledger: InMemoryLedger, fake_clock: FakeLoopClock) -> None:
        """A key with headroom grants a lease without waiting."""
        held = await acquire("k", one_slot(), ledger=ledger)

        assert (held.key, held.acquired_at, held.released) == ("k", 1000.0, False)

    async def test_waits_for_a_release_without_time_passing(
        self, ledger: InMemoryLedger, fake_clock: FakeLoopClock
    ) -> None:
        """A waiting caller gets the slot as soon as its holder releases, not at its next deadline."""
        cap = one_slot()
        holder = await hold(ledger, cap)
        caller = asyncio.create_task(acquire("k", cap, ledger=ledger))
        await settle(caller)
        assert not caller.done()

        await holder.release()
        await settle(caller)

        assert caller.result().acquired_at == 1000.0

    async def test_release_hands_the_slot_to_the_waiting_caller(
        self, ledger: InMemoryLedger, fake_clock: FakeLoopClock
    ) -> None:
        """A released slot goes to the waiting caller: a newcomer asking at once cannot take it."""
        cap = one_slot(max_caller_retries=1)
        holder = await hold(ledger, cap)
        caller = asyncio.create_task(acquire("k", cap, ledger=ledger))
        await settle(caller)

        await holder.release()
        assert await ledger.try_acquire("k", cap) is None  # reserved for the caller
        await settle(caller)
        assert caller.result().key == "k"

    async def test_wake_up_that_does_not_admit_costs_no_retry(
        self, ledger: InMemoryLedger, fake_clock: FakeLoopClock
    ) -> None:
        """A caller woken by a release but refused (the key cooled down meanwhile) keeps its deadline."""
        cap = one_slot(max_caller_retries=1)
        holder = await hold(ledger, cap)
        caller = asyncio.create_task(acquire("k", cap, ledger=ledger))
        await settle(caller)
        fake_clock.advance(4)
        await holder.release()
        await ledger.cooldown("k", 100)  # before the woken caller runs
        await settle(caller)

        fake_clock.advance(5.999)
        await settle(caller)
        assert not caller.done()
        fake_clock.advance(0.001)
        await settle(caller)

        with pytest.raises(CapacityExhausted):
            caller.result()

    @pytest.mark.parametrize(
        "backoff",
        [
            {"backoff_strategy": "constant", "max_caller_retries": 3},
            {"backoff_strategy": "exponential", "backoff_initial_ms": 1000, "max_caller_retries": 4},
            {"backoff_strategy": "linear", "backoff_initial_ms": 500, "max_caller_retries": 5},
            {
                "backoff_strategy": "exponential",
                "backoff_initial_ms": 1000,
                "backoff_ceiling_ms": 3000,
                "max_caller_retries": 4,
            },
        ],
    )
    async def test_gives_up_after_exactly_max_caller_retries_deadlines(
        self, ledger: InMemoryLedger, fake_clock: FakeLoopClock, backoff: dict[str, object]
    ) -> None:
        """A caller waits out each delay of the schedule once, and gives up when the last one passes."""
        cap = one_slot(**{"backoff_ceiling_ms": 30_000, **backoff})
        schedule = cap.backoff_schedule()
        await hold(ledger, cap)
        caller = asyncio.create_task(acquire("k", cap, ledger=ledger))
        await settle(caller)

        for delay in schedule[:-1]:
            fake_clock.advance(delay)
            await settle(caller)
            assert not caller.done()
        fake_clock.advance(schedule[-1] - 0.001)
        await settle(caller)
        assert not caller.done()
        fake_clock.advance(0.001)
        await settle(caller)

        expected = rf"nothing was admitted after {len(schedule)} retries \(k: slots\)"
        with pytest.raises(CapacityExhausted, match=expected):
            caller.result()

    async def test_exhausted_error_carries_the_snapshot(
        self, ledger: InMemoryLedger, fake_clock: FakeLoopClock
    ) -> None:
        """Giving up reports the ledger's usage and when to try again."""
        cap = AgentCapacity(rpm=1, max_caller_retries=0)
        await ledger.try_acquire("k", cap)

        with pytest.raises(CapacityExhausted, match="Capacity exhausted") as exc_info:
            await acquire("k", cap, ledger=ledger)

        assert exc_info.value.snapshot["k"].acquired == 1
        assert exc_info.value.retry_after == pytest.approx(60.0)

    async def test_zero_retries_gives_up_at_once(self, ledger: InMemoryLedger, fake_clock: FakeLoopClock) -> None:
        """With max_caller_retries=0 a saturated key is refused without waiting."""
        cap = one_slot(max_caller_retries=0)
        await hold(ledger, cap)

        with pytest.raises(CapacityExhausted):
            await acquire("k", cap, ledger=ledger)

    async def test_exhausted_key_raises_at_once(self, ledger: InMemoryLedger, fake_clock: FakeLoopClock) -> None:
        """A key whose entitlement is gone is never waited for."""
        cap = one_slot(max_caller_retries=100)
        await ledger.mark_exhausted("k", 3600)

        with pytest.raises(CapacityExhausted, match="'k' has no entitlement left") as exc_info:
            await acquire("k", cap, ledger=ledger)

        assert exc_info.value.retry_after == 3600.0

    async def test_queue_full_is_raised_at_once(self, ledger: InMemoryLedger, fake_clock: FakeLoopClock) -> None:
        """A caller past max_queue is refused with QueueFull, which is a CapacityExhausted."""
        cap = one_slot(max_queue=0)
        await hold(ledger, cap)

        with pytest.raises(QueueFull):
            await acquire("k", cap, ledger=ledger)

    async def test_woken_by_refill_before_the_deadline(self, ledger: InMemoryLedger, fake_clock: FakeLoopClock) -> None:
        """A rate-limited caller is admitted when the bucket leaks, without using a retry."""
        cap = AgentCapacity(rpm=6, backoff_strategy="constant", backoff_initial_ms=30_000, max_caller_retries=1)
        for _ in range(6):
            await ledger.try_acquire("k", cap)
        caller = asyncio.create_task(acquire("k", cap, ledger=ledger))
        await settle(caller)

        fake_clock.advance(10)
        await settle(caller)

        assert caller.result().acquired_at == 1010.0

    @pytest.mark.parametrize("rpm", [7, 9, 17, 90])
    async def test_admitted_at_the_reported_ready_in(
        self, ledger: InMemoryLedger, fake_clock: FakeLoopClock, rpm: float
    ) -> None:
        """On a frozen clock, a caller is admitted when the clock reaches the key's ready_in (no busy loop)."""
        cap = AgentCapacity(rpm=rpm, backoff_strategy="constant", backoff_initial_ms=30_000, max_caller_retries=1)
        while await ledger.try_acquire("k", cap) is not None:
            pass
        status = await ledger.status("k", cap)
        assert status.ready_in is not None
        caller = asyncio.create_task(acquire("k", cap, ledger=ledger))
        await settle(caller)

        fake_clock.advance(status.ready_in)
        await settle(caller)

        assert caller.result().key == "k"

    async def test_jitter_never_shortens_a_wait(self, ledger: InMemoryLedger, fake_clock: FakeLoopClock) -> None:
        """Backoff windows last the schedule's delays exactly, jitter or not: a jittered draw near 0 would spend a
        retry on a wait that could not succeed (jitter spreads only the cooldowns a caller picks itself)."""
        cap = one_slot(backoff_jitter=True, max_caller_retries=2)
        await hold(ledger, cap)
        caller = asyncio.create_task(acquire("k", cap, ledger=ledger))
        await settle(caller)

        fake_clock.advance(10)
        await settle(caller)
        fake_clock.advance(10 - 0.001)
        await settle(caller)
        assert not caller.done()
        fake_clock.advance(0.001)
        await settle(caller)

        assert isinstance(caller.exception(), CapacityExhausted)

    async def test_a_cooldown_is_waited_out_without_spending_retries(
        self, ledger: InMemoryLedger, fake_clock: FakeLoopClock
    ) -> None:
        """A key cooling down for longer than the whole schedule is waited for until the cooldown ends: the
        provider's word extends a wait, and a wait for it spends no retry."""
        cap = one_slot(backoff_initial_ms=100, backoff_ceiling_ms=100, max_caller_retries=2)
        await ledger.cooldown("k", 30)
        caller = asyncio.create_task(acquire("k", cap, ledger=ledger))
        await settle(caller)

        fake_clock.advance(29.999)
        await settle(caller)
        assert not caller.done()
        fake_clock.advance(0.001)
        await settle(caller)

        assert caller.result().acquired_at == pytest.approx(1030.0)

    async def test_a_cooldown_past_max_retry_after_fails_fast(
        self, ledger: InMemoryLedger, fake_clock: FakeLoopClock
    ) -> None:
        """A cooldown longer than ``max_retry_after_ms`` is not waited out: refused at once with ``retry_after``."""
        await ledger.cooldown("k", 300)

        with pytest.raises(CapacityExhausted, match=r"wait 300\.0s") as raised:
            await acquire("k", one_slot(max_retry_after_ms=60_000), ledger=ledger)

        assert raised.value.retry_after == pytest.approx(300)

    async def test_slots_after_a_cooldown_spend_retries_from_there(
        self, ledger: InMemoryLedger, fake_clock: FakeLoopClock
    ) -> None:
        """Once a cooldown ended, a key still saturated is waited for by the whole schedule."""
        cap = one_slot(max_caller_retries=1)
        await hold(ledger, cap)
        await ledger.cooldown("k", 5)
        caller = asyncio.create_task(acquire("k", cap, ledger=ledger))
        await settle(caller)

        fake_clock.advance(5)
        await settle(caller)
        fake_clock.advance(10 - 0.001)
        await settle(caller)
        assert not caller.done()
        fake_clock.advance(0.001)
        await settle(caller)

        assert isinstance(caller.exception(), CapacityExhausted)

    async def test_a_timed_out_waiter_keeps_its_place(self, ledger: InMemoryLedger, fake_clock: FakeLoopClock) -> None:
        """A caller whose backoff window ended is still first in line when a slot frees (FIFO across windows)."""
        cap = one_slot(backoff_initial_ms=1000, backoff_ceiling_ms=1000, max_caller_retries=10)
        held = await hold(ledger, cap)
        oldest = asyncio.create_task(acquire("k", cap, ledger=ledger))
        await settle(oldest)
        fake_clock.advance(1.5)  # the oldest caller's first window ended: it waits again
        await settle(oldest)
        youngest = asyncio.create_task(acquire("k", cap, ledger=ledger))
        await settle(youngest)

        await held.release()
        await settle(oldest, youngest)

        assert oldest.done()
        assert not youngest.done()
        await oldest.result().release()
        await settle(youngest)
        assert youngest.done()

    async def test_uses_the_default_ledger(self, fake_clock: FakeLoopClock) -> None:
        """Without a ledger, acquire() records the lease in the loop's default ledger."""
        held = await acquire("k", one_slot())

        assert (await default_ledger().snapshot())["k"].in_flight == 1
        await held.release()
        await default_ledger().aclose()


class TestLease:
    async def test_releases_on_exit(self, ledger: InMemoryLedger) -> None:
        """The lease is released when the block ends."""
        async with lease("k", one_slot(), ledger=ledger) as held:
            assert not held.released
            assert (await ledger.snapshot())["k"].in_flight == 1

        assert held.released
        assert (await ledger.snapshot())["k"].in_flight == 0

    async def test_releases_on_exception(self, ledger: InMemoryLedger) -> None:
        """The lease is released when the block raises, and the error propagates."""
        with pytest.raises(ZeroDivisionError):
            async with lease("k", one_slot(), ledger=ledger):
                1 / 0  # noqa: B018

        assert (await ledger.snapshot())["k"].in_flight == 0

    async def test_releases_on_cancellation(self, ledger: InMemoryLedger) -> None:
        """The lease is released when the task holding it is cancelled."""
        entered = asyncio.Event()

        async def work() -> None:
            async with lease("k", one_slot(), ledger=ledger):
                entered.set()
                await asyncio.Event().wait()

        task = asyncio.create_task(work())
        await entered.wait()
        task.cancel()
        await settle(task)

        assert task.cancelled()
        assert (await ledger.snapshot())["k"].in_flight == 0


async def test_thousands_of_callers_never_exceed_max_concurrent(ledger: InMemoryLedger) -> None:
    """5000 concurrent callers never hold more than max_concurrent leases and leave nothing in flight."""
    cap = AgentCapacity(
        max_concurrent=7,
        backoff_strategy="constant",
        backoff_initial_ms=1000,
        backoff_ceiling_ms=1000,
        backoff_jitter=False,
        max_caller_retries=10_000,
    )
    holding = peak = 0

    async def call() -> None:
        nonlocal holding, peak
        async with lease("k", cap, ledger=ledger):
            holding += 1
            peak = max(peak, holding)
            await asyncio.sleep(0)
            holding -= 1

    await asyncio.gather(*(call() for _ in range(5000)))

    assert peak == 7
    usage = (await ledger.snapshot())["k"]
    assert (usage.in_flight, usage.waiting, usage.acquired) == (0, 0, 5000)
