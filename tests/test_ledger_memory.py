"""The in-process ledger: admission, rates, cooldowns, status, waiting and closing, on a fake loop clock."""

from __future__ import annotations

import asyncio

import pytest

from autogen_capacity import (
    AgentCapacity,
    CapacityLedger,
    InMemoryLedger,
    KeyStatus,
    KeyUsage,
    Lease,
    LedgerClosed,
    QueueFull,
    acquire,
    default_ledger,
)
from autogen_capacity.testing import FakeLoopClock, settle


async def take(ledger: InMemoryLedger, key: str, cap: AgentCapacity, n: int) -> list[Lease]:
    """Take ``n`` leases, failing the test if any is refused."""
    leases = []
    for _ in range(n):
        held = await ledger.try_acquire(key, cap)
        assert held is not None
        leases.append(held)
    return leases


def wait_task(ledger: InMemoryLedger, key: str, cap: AgentCapacity, timeout: float = 30.0) -> asyncio.Task[bool]:
    return asyncio.create_task(ledger.wait_for_change({key: cap}, timeout))


def take_task(ledger: InMemoryLedger, key: str, cap: AgentCapacity) -> asyncio.Task[Lease | None]:
    """A caller that waits for a change on ``key`` and then takes a lease (``None`` if refused)."""

    async def wait_then_take() -> Lease | None:
        await ledger.wait_for_change({key: cap}, 60)
        return await ledger.try_acquire(key, cap)

    return asyncio.create_task(wait_then_take())


async def test_is_a_capacity_ledger() -> None:
    """The in-memory ledger implements the ledger protocol."""
    assert isinstance(InMemoryLedger(), CapacityLedger)


class TestSlots:
    @pytest.mark.parametrize("limit", [1, 2, 7])
    async def test_admits_exactly_max_concurrent(self, ledger: InMemoryLedger, limit: int) -> None:
        """Exactly max_concurrent leases are granted; the next one is refused."""
        cap = AgentCapacity(max_concurrent=limit)

        await take(ledger, "a", cap, limit)

        assert await ledger.try_acquire("a", cap) is None

    async def test_release_frees_one_slot(self, ledger: InMemoryLedger) -> None:
        """A released lease lets exactly one more in."""
        cap = AgentCapacity(max_concurrent=2)
        first, _ = await take(ledger, "a", cap, 2)

        await first.release()

        assert await ledger.try_acquire("a", cap) is not None
        assert await ledger.try_acquire("a", cap) is None

    async def test_double_release_frees_one_slot_only(self, ledger: InMemoryLedger) -> None:
        """Releasing a lease twice gives back one slot, not two."""
        cap = AgentCapacity(max_concurrent=2)
        first, _ = await take(ledger, "a", cap, 2)

        await first.release()
        await first.release()

        assert first.released
        assert (await ledger.snapshot())["a"].in_flight == 1
        await take(ledger, "a", cap, 1)
        assert await ledger.try_acquire("a", cap) is None

    async def test_lease_context_manager_releases_on_exception(self, ledger: InMemoryLedger) -> None:
        """A lease used with ``async with`` is released even when the block raises."""
        cap = AgentCapacity(max_concurrent=1)
        held = await ledger.try_acquire("a", cap)
        assert held is not None

        with pytest.raises(RuntimeError, match="boom"):
            async with held:
                raise RuntimeError("boom")

        assert held.released
        assert (await ledger.snapshot())["a"].in_flight == 0

    async def test_keys_are_independent(self, ledger: InMemoryLedger) -> None:
        """A saturated key does not limit another key."""
        cap = AgentCapacity(max_concurrent=1)
        await take(ledger, "a", cap, 1)

        assert await ledger.try_acquire("b", cap) is not None

    async def test_unbounded_contract_always_admits(self, ledger: InMemoryLedger) -> None:
        """A contract without limits admits everyone."""
        await take(ledger, "a", AgentCapacity(), 1000)

    async def test_lease_records_key_time_and_state(self, ledger: InMemoryLedger, fake_clock: FakeLoopClock) -> None:
        """A lease knows its key and when it was taken, and shows whether it is held."""
        held = await ledger.try_acquire("a", AgentCapacity())
        assert held is not None

        assert (held.key, held.acquired_at) == ("a", 1000.0)
        assert repr(held) == f"<Lease 'a' {held.lease_id} held>"
        await held.release()
        assert repr(held) == f"<Lease 'a' {held.lease_id} released>"


class TestRate:
    async def test_rpm_bucket_then_one_per_leak_interval(
        self, ledger: InMemoryLedger, fake_clock: FakeLoopClock
    ) -> None:
        """rpm=6 admits 6 at once, then one more each 10 s, not a moment before."""
        cap = AgentCapacity(rpm=6)
        await take(ledger, "a", cap, 6)
        assert await ledger.try_acquire("a", cap) is None

        for _ in range(3):
            fake_clock.advance(9.999)
            assert await ledger.try_acquire("a", cap) is None
            fake_clock.advance(0.001)
            assert await ledger.try_acquire("a", cap) is not None
            assert await ledger.try_acquire("a", cap) is None

    async def test_rate_limits_requests_not_concurrency(
        self, ledger: InMemoryLedger, fake_clock: FakeLoopClock
    ) -> None:
        """Releasing a lease does not refill the rate bucket."""
        cap = AgentCapacity(rpm=2)
        for held in await take(ledger, "a", cap, 2):
            await held.release()

        assert await ledger.try_acquire("a", cap) is None

    @pytest.mark.parametrize(("rpm", "interval"), [(0.5, 120.0), (0.1, 600.0)])
    async def test_rpm_below_one_is_a_bucket_of_one(
        self, ledger: InMemoryLedger, fake_clock: FakeLoopClock, rpm: float, interval: float
    ) -> None:
        """A rate under one a minute admits one at once, then one per 60/rpm seconds."""
        cap = AgentCapacity(rpm=rpm)
        await take(ledger, "a", cap, 1)
        assert await ledger.try_acquire("a", cap) is None
        assert await ledger.status("a", cap) == KeyStatus(0.0, "rate", pytest.approx(interval))

        fake_clock.advance(interval - 0.01)
        assert await ledger.try_acquire("a", cap) is None
        fake_clock.advance(0.01)
        assert await ledger.try_acquire("a", cap) is not None

    @pytest.mark.parametrize("rpm", [6, 7, 9, 17, 45, 90, 0.7, 7.3])
    async def test_advancing_ready_in_always_admits(
        self, ledger: InMemoryLedger, fake_clock: FakeLoopClock, rpm: float
    ) -> None:
        """After waiting exactly the reported ready_in, the key admits (no float residue keeps it shut)."""
        cap = AgentCapacity(rpm=rpm)
        while await ledger.try_acquire("a", cap) is not None:
            pass

        for _ in range(40):
            status = await ledger.status("a", cap)
            assert status.blocked_by == "rate"
            assert status.ready_in is not None
            fake_clock.advance(status.ready_in)
            assert await ledger.try_acquire("a", cap) is not None

    async def test_changed_rpm_measures_the_same_bucket(
        self, ledger: InMemoryLedger, fake_clock: FakeLoopClock
    ) -> None:
        """A key asked about with a different rpm keeps what it already took, measured against the new rate
        (as RedisLedger does: one bucket per key)."""
        await take(ledger, "a", AgentCapacity(rpm=1), 1)

        await take(ledger, "a", AgentCapacity(rpm=3), 2)
        assert await ledger.try_acquire("a", AgentCapacity(rpm=3)) is None


class TestTokens:
    async def test_tpm_window_blocks_then_recovers_after_60_s(
        self, ledger: InMemoryLedger, fake_clock: FakeLoopClock
    ) -> None:
        """Tokens recorded up to tpm block the key until they leave the 60 s window."""
        cap = AgentCapacity(tpm=100)
        await ledger.record_tokens("a", 60)
        fake_clock.advance(10)
        await ledger.record_tokens("a", 40)

        assert await ledger.try_acquire("a", cap) is None
        assert await ledger.status("a", cap) == KeyStatus(0.0, "tpm", 50.0)
        fake_clock.advance(49.999)
        assert await ledger.try_acquire("a", cap) is None
        fake_clock.advance(0.001)
        assert await ledger.try_acquire("a", cap) is not None
        assert await ledger.headroom("a", cap) == pytest.approx(0.6)

    async def test_ready_in_waits_for_enough_tokens_to_expire(
        self, ledger: InMemoryLedger, fake_clock: FakeLoopClock
    ) -> None:
        """ready_in points at the first moment the window drops below tpm, not at the first expiry."""
        cap = AgentCapacity(tpm=100)
        await ledger.record_tokens("a", 10)
        fake_clock.advance(5)
        await ledger.record_tokens("a", 200)

        assert await ledger.status("a", cap) == KeyStatus(0.0, "tpm", 60.0)

    @pytest.mark.parametrize("tokens", [0, -5])
    async def test_non_positive_tokens_are_ignored(self, ledger: InMemoryLedger, tokens: int) -> None:
        """Recording zero or negative tokens debits nothing."""
        await ledger.record_tokens("a", tokens)

        assert await ledger.snapshot() == {}

    async def test_tokens_do_not_take_slots(self, ledger: InMemoryLedger) -> None:
        """tpm is debited by record_tokens only, never by admission."""
        cap = AgentCapacity(tpm=1)

        await take(ledger, "a", cap, 50)


class TestCooldownAndExhaustion:
    async def test_cooldown_blocks_for_its_duration(self, ledger: InMemoryLedger, fake_clock: FakeLoopClock) -> None:
        """A cooling key admits nothing until its cooldown ends."""
        cap = AgentCapacity()
        await ledger.cooldown("a", 5)

        assert await ledger.status("a", cap) == KeyStatus(0.0, "cooldown", 5.0)
        fake_clock.advance(2)
        assert await ledger.status("a", cap) == KeyStatus(0.0, "cooldown", 3.0)
        assert await ledger.try_acquire("a", cap) is None
        fake_clock.advance(3)
        assert await ledger.try_acquire("a", cap) is not None

    async def test_cooldown_extends_never_shortens(self, ledger: InMemoryLedger, fake_clock: FakeLoopClock) -> None:
        """A shorter cooldown leaves a running longer one alone; a longer one extends it."""
        await ledger.cooldown("a", 10)
        await ledger.cooldown("a", 1)
        assert (await ledger.snapshot())["a"].cooling_down_for == 10.0

        await ledger.cooldown("a", 20)
        assert (await ledger.snapshot())["a"].cooling_down_for == 20.0

    async def test_mark_exhausted_blocks_for_its_duration(
        self, ledger: InMemoryLedger, fake_clock: FakeLoopClock
    ) -> None:
        """An exhausted key admits nothing until the given time has passed."""
        cap = AgentCapacity()
        await ledger.mark_exhausted("a", 3600)

        assert await ledger.status("a", cap) == KeyStatus(0.0, "exhausted", 3600.0)
        assert await ledger.try_acquire("a", cap) is None
        assert (await ledger.snapshot())["a"].exhausted_for == 3600.0
        fake_clock.advance(3600)
        assert await ledger.try_acquire("a", cap) is not None

    async def test_exhaustion_outranks_cooldown(self, ledger: InMemoryLedger, fake_clock: FakeLoopClock) -> None:
        """A key both exhausted and cooling reports exhaustion."""
        await ledger.cooldown("a", 100)
        await ledger.mark_exhausted("a", 10)

        assert (await ledger.status("a", AgentCapacity())).blocked_by == "exhausted"


class TestStatus:
    async def test_idle_key_has_full_headroom(self, ledger: InMemoryLedger) -> None:
        """A key nobody uses has headroom 1 and is not blocked."""
        cap = AgentCapacity(max_concurrent=4, rpm=60, tpm=1000)

        assert await ledger.status("a", cap) == KeyStatus(1.0)
        assert await ledger.headroom("a", cap) == 1.0

    @pytest.mark.parametrize(
        ("cap", "block"),
        [
            (AgentCapacity(max_concurrent=1), "slots"),
            (AgentCapacity(rpm=1), "rate"),
            (AgentCapacity(max_concurrent=4), "cooldown"),
        ],
    )
    async def test_a_refusal_is_the_status_that_refused(
        self, ledger: InMemoryLedger, fake_clock: FakeLoopClock, cap: AgentCapacity, block: str
    ) -> None:
        """acquire_or_status answers a lease, or on refusal exactly what status() reads, taking nothing."""
        held = await ledger.acquire_or_status("a", cap)
        assert isinstance(held, Lease)
        if block == "cooldown":
            await ledger.cooldown("a", 5.0)
        refused = await ledger.acquire_or_status("a", cap)
        assert isinstance(refused, KeyStatus)
        assert refused.blocked_by == block
        assert refused == await ledger.status("a", cap)
        assert (await ledger.snapshot())["a"].in_flight == 1

    async def test_idle_only_leases_only_a_key_with_room_for_anything(self, ledger: InMemoryLedger) -> None:
        """idle_only: headroom 1 is leased; a key partly used answers its status (open), taking nothing."""
        two = AgentCapacity(max_concurrent=2)
        held = await ledger.acquire_or_status("a", two, idle_only=True)
        assert isinstance(held, Lease)
        assert await ledger.acquire_or_status("a", two, idle_only=True) == KeyStatus(0.5)
        assert (await ledger.snapshot())["a"].in_flight == 1

    async def test_unbounded_key_has_full_headroom(self, ledger: InMemoryLedger) -> None:
        """An unbounded key keeps headroom 1 however busy it is."""
        cap = AgentCapacity()
        await take(ledger, "a", cap, 50)

        assert await ledger.headroom("a", cap) == 1.0

    @pytest.mark.parametrize(
        ("cap", "slots", "tokens"),
        [
            (AgentCapacity(max_concurrent=2), 1, 0),
            (AgentCapacity(rpm=4), 2, 0),
            (AgentCapacity(tpm=100), 0, 50),
            (AgentCapacity(max_concurrent=4, rpm=100, tpm=1000), 2, 100),
        ],
    )
    async def test_half_used_key_has_half_headroom(
        self, ledger: InMemoryLedger, fake_clock: FakeLoopClock, cap: AgentCapacity, slots: int, tokens: int
    ) -> None:
        """Headroom is the free share of the tightest limit."""
        await take(ledger, "a", cap, slots)
        await ledger.record_tokens("a", tokens)

        assert await ledger.headroom("a", cap) == pytest.approx(0.5)

    @pytest.mark.parametrize(
        ("cap", "setup", "expected"),
        [
            (AgentCapacity(max_concurrent=1), "take", KeyStatus(0.0, "slots", None)),
            (AgentCapacity(rpm=6), "take", KeyStatus(0.0, "rate", 10.0)),
            (AgentCapacity(tpm=10), "tokens", KeyStatus(0.0, "tpm", 60.0)),
            (AgentCapacity(max_concurrent=1), "cooldown", KeyStatus(0.0, "cooldown", 7.0)),
            (AgentCapacity(max_concurrent=1), "exhausted", KeyStatus(0.0, "exhausted", 7.0)),
        ],
    )
    async def test_blocked_by_names_the_reason(
        self, ledger: InMemoryLedger, fake_clock: FakeLoopClock, cap: AgentCapacity, setup: str, expected: KeyStatus
    ) -> None:
        """A blocked key says why, and how long until it admits without a release."""
        if setup == "take":
            while await ledger.try_acquire("a", cap) is not None:
                pass
        elif setup == "tokens":
            await ledger.record_tokens("a", 10)
        elif setup == "cooldown":
            await ledger.cooldown("a", 7)
        else:
            await ledger.mark_exhausted("a", 7)

        assert await ledger.status("a", cap) == expected

    async def test_headroom_stays_within_zero_and_one(self, ledger: InMemoryLedger, fake_clock: FakeLoopClock) -> None:
        """Headroom never leaves [0, 1] while a key fills up and drains."""
        cap = AgentCapacity(max_concurrent=5, rpm=30, tpm=500)
        seen = []
        leases = []
        for _ in range(8):
            held = await ledger.try_acquire("a", cap)
            if held is not None:
                leases.append(held)
            await ledger.record_tokens("a", 90)
            seen.append(await ledger.headroom("a", cap))
            fake_clock.advance(1)
        for held in leases:
            await held.release()
            fake_clock.advance(20)
            seen.append(await ledger.headroom("a", cap))

        assert all(0.0 <= h <= 1.0 for h in seen)
        assert seen[-1] == 1.0


class TestSnapshot:
    async def test_empty_ledger_has_empty_snapshot(self, ledger: InMemoryLedger) -> None:
        """A ledger nobody used shows no keys."""
        assert await ledger.snapshot() == {}

    async def test_shows_usage_per_key(self, ledger: InMemoryLedger, fake_clock: FakeLoopClock) -> None:
        """The snapshot counts leases in flight, waiters, grants and recent tokens per key."""
        cap = AgentCapacity(max_concurrent=2)
        first, _ = await take(ledger, "a", cap, 2)
        await first.release()
        await take(ledger, "a", cap, 1)
        await ledger.record_tokens("a", 42)
        waiter = wait_task(ledger, "a", cap)
        await settle()

        snapshot = await ledger.snapshot()

        assert snapshot == {"a": KeyUsage(in_flight=2, waiting=1, acquired=3, tokens_last_minute=42)}
        fake_clock.advance(60)
        await settle(waiter)
        assert await ledger.snapshot() == {"a": KeyUsage(in_flight=2, acquired=3)}


class TestWaitForChange:
    async def test_cooldown_end_wakes_only_as_many_waiters_as_slots(
        self, ledger: InMemoryLedger, fake_clock: FakeLoopClock
    ) -> None:
        """Ten callers waiting out a cooldown on a two-slot key: its end wakes the two oldest, not all ten."""
        cap = AgentCapacity(max_concurrent=2)
        await ledger.cooldown("a", 5)
        waiters = [take_task(ledger, "a", cap)]
        for _ in range(9):
            await settle()
            waiters.append(take_task(ledger, "a", cap))
        await settle()
        fake_clock.advance(5)
        await settle(*waiters)
        assert [w.done() for w in waiters] == [True, True] + [False] * 8
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)

    async def test_refill_wakes_the_oldest_waiter_once(self, ledger: InMemoryLedger, fake_clock: FakeLoopClock) -> None:
        """An rpm refill of one request wakes one waiter, the oldest."""
        cap = AgentCapacity(rpm=6)
        for _ in range(6):
            assert await ledger.try_acquire("a", cap) is not None
        first = take_task(ledger, "a", cap)
        await settle()
        second = take_task(ledger, "a", cap)
        await settle()
        fake_clock.advance(10)
        await settle(first, second)
        assert first.done()
        assert not second.done()
        second.cancel()
        await asyncio.gather(second, return_exceptions=True)

    async def test_returns_at_once_when_a_key_admits(self, ledger: InMemoryLedger) -> None:
        """A caller asking about a key that admits now is not made to wait."""
        assert await ledger.wait_for_change({"a": AgentCapacity(max_concurrent=1)}, 30) is True

    async def test_woken_by_a_release(self, ledger: InMemoryLedger, fake_clock: FakeLoopClock) -> None:
        """A waiter wakes with True as soon as a lease on its key is released."""
        cap = AgentCapacity(max_concurrent=1)
        (held,) = await take(ledger, "a", cap, 1)
        waiter = wait_task(ledger, "a", cap)
        await settle()
        assert not waiter.done()

        await held.release()
        await settle(waiter)

        assert waiter.result() is True

    async def test_release_wakes_only_the_oldest_waiter(
        self, ledger: InMemoryLedger, fake_clock: FakeLoopClock
    ) -> None:
        """One release wakes the oldest waiter only; the next release wakes the next one (FIFO)."""
        cap = AgentCapacity(max_concurrent=2)
        first_lease, second_lease = await take(ledger, "a", cap, 2)

        async def wait_then_take() -> Lease | None:
            await ledger.wait_for_change({"a": cap}, 60)
            return await ledger.try_acquire("a", cap)

        oldest = asyncio.ensure_future(wait_then_take())
        await settle()
        youngest = wait_task(ledger, "a", cap)
        await settle()

        await first_lease.release()
        await settle(oldest, youngest)
        assert oldest.result() is not None
        assert not youngest.done()

        await second_lease.release()
        await settle(youngest)
        assert youngest.result() is True

    async def test_released_slot_is_handed_to_the_waiter_not_the_releaser(
        self, ledger: InMemoryLedger, fake_clock: FakeLoopClock
    ) -> None:
        """A caller that releases and at once asks again cannot snatch the slot from the oldest waiter."""
        cap = AgentCapacity(max_concurrent=1)
        (held,) = await take(ledger, "a", cap, 1)

        async def wait_then_take() -> Lease | None:
            await ledger.wait_for_change({"a": cap}, 60)
            return await ledger.try_acquire("a", cap)

        waiter = asyncio.ensure_future(wait_then_take())
        await settle()
        await held.release()
        assert await ledger.try_acquire("a", cap) is None
        await settle(waiter)
        assert waiter.result() is not None

    async def test_unused_hand_over_passes_to_the_next_waiter(
        self, ledger: InMemoryLedger, fake_clock: FakeLoopClock
    ) -> None:
        """A woken waiter that finishes without taking its slot passes it on to the next waiter."""
        cap = AgentCapacity(max_concurrent=1)
        (held,) = await take(ledger, "a", cap, 1)
        first = wait_task(ledger, "a", cap)
        await settle()
        second = wait_task(ledger, "a", cap)
        await settle()
        await held.release()
        await settle(first, second)
        await settle()  # the finished tasks' hand-overs pass on, then lapse
        assert first.result() is True
        assert second.result() is True
        assert await ledger.try_acquire("a", cap) is not None

    async def test_cancelled_waiter_passes_its_wake_up_on(
        self, ledger: InMemoryLedger, fake_clock: FakeLoopClock
    ) -> None:
        """A waiter cancelled right after a release woke it hands the wake-up to the next waiter."""
        cap = AgentCapacity(max_concurrent=1)
        (held,) = await take(ledger, "a", cap, 1)
        oldest = wait_task(ledger, "a", cap)
        await settle()
        youngest = wait_task(ledger, "a", cap)
        await settle()

        await held.release()
        oldest.cancel()
        await settle(oldest, youngest)

        assert oldest.cancelled()
        assert youngest.result() is True

    async def test_woken_at_refill_without_release(self, ledger: InMemoryLedger, fake_clock: FakeLoopClock) -> None:
        """A waiter on a rate-limited key wakes when the bucket leaks, with no release at all."""
        cap = AgentCapacity(rpm=6)
        await take(ledger, "a", cap, 6)
        waiter = wait_task(ledger, "a", cap, timeout=30)
        await settle()

        fake_clock.advance(9.9)
        await settle(waiter)
        assert not waiter.done()
        fake_clock.advance(0.1)
        await settle(waiter)

        assert waiter.result() is True
        assert await ledger.try_acquire("a", cap) is not None

    async def test_woken_when_cooldown_ends(self, ledger: InMemoryLedger, fake_clock: FakeLoopClock) -> None:
        """A waiter on a cooling key wakes when the cooldown ends."""
        cap = AgentCapacity()
        await ledger.cooldown("a", 4)
        waiter = wait_task(ledger, "a", cap)
        await settle()

        fake_clock.advance(4)
        await settle(waiter)

        assert waiter.result() is True

    async def test_returns_false_at_timeout(self, ledger: InMemoryLedger, fake_clock: FakeLoopClock) -> None:
        """A waiter nothing wakes returns False once its timeout has passed, not before."""
        cap = AgentCapacity(max_concurrent=1)
        await take(ledger, "a", cap, 1)
        waiter = wait_task(ledger, "a", cap, timeout=5)
        await settle()

        fake_clock.advance(4.99)
        await settle(waiter)
        assert not waiter.done()
        fake_clock.advance(0.01)
        await settle(waiter)

        assert waiter.result() is False
        assert (await ledger.snapshot())["a"].waiting == 0

    async def test_refill_after_timeout_still_times_out(
        self, ledger: InMemoryLedger, fake_clock: FakeLoopClock
    ) -> None:
        """A refill due after the timeout does not extend the wait."""
        cap = AgentCapacity(rpm=1)
        await take(ledger, "a", cap, 1)
        waiter = wait_task(ledger, "a", cap, timeout=5)
        await settle()

        fake_clock.advance(5)
        await settle(waiter)

        assert waiter.result() is False

    async def test_waits_on_several_keys(self, ledger: InMemoryLedger, fake_clock: FakeLoopClock) -> None:
        """A waiter on several keys wakes when any one of them frees a slot."""
        cap = AgentCapacity(max_concurrent=1)
        await take(ledger, "a", cap, 1)
        (held_b,) = await take(ledger, "b", cap, 1)
        waiter = asyncio.create_task(ledger.wait_for_change({"a": cap, "b": cap}, 30))
        await settle()

        await held_b.release()
        await settle(waiter)

        assert waiter.result() is True
        assert (await ledger.snapshot())["a"].waiting == 0

    async def test_a_slot_kept_for_a_woken_caller_passes_on_once_it_leases_another_key(
        self, ledger: InMemoryLedger
    ) -> None:
        """A caller woken on "a" keeps its slot until its next lease; taking "b" instead frees "a" for the others
        (it stayed reserved for the caller's task for as long as the task lived)."""
        cap = AgentCapacity(max_concurrent=1)
        held_a, held_b = (await take(ledger, "a", cap, 1))[0], (await take(ledger, "b", cap, 1))[0]
        moved_on, done = asyncio.Event(), asyncio.Event()

        async def worker() -> None:  # a long-lived task
            assert await ledger.wait_for_change({"a": cap, "b": cap}, 30) is True
            taken = await ledger.try_acquire("b", cap)
            assert taken is not None
            moved_on.set()
            await done.wait()
            await taken.release()

        task = asyncio.create_task(worker())
        await settle()
        await held_a.release()  # handed to the worker
        await held_b.release()
        await asyncio.wait_for(moved_on.wait(), 5)

        other = await ledger.try_acquire("a", cap)
        assert other is not None
        done.set()
        await task

    async def test_a_refused_try_on_the_kept_key_keeps_its_slot_until_the_next_lease(
        self, ledger: InMemoryLedger, fake_clock: FakeLoopClock
    ) -> None:
        """A woken caller whose first try on the kept key is refused (a cooldown recorded meanwhile) still has the
        slot kept (a refusal is no lease); its next lease, elsewhere, passes it on. The slot was reserved for good
        when the refused try dropped the caller's record of it."""
        cap = AgentCapacity(max_concurrent=1)
        held = (await take(ledger, "a", cap, 1))[0]
        woken, tried, done = asyncio.Event(), asyncio.Event(), asyncio.Event()
        refused: list[object] = []

        async def worker() -> None:  # a long-lived task
            assert await ledger.wait_for_change({"a": cap}, 30) is True
            woken.set()
            await tried.wait()
            refused.append(await ledger.try_acquire("a", cap))
            elsewhere = await ledger.try_acquire("b", cap)
            assert elsewhere is not None
            refused.append(await ledger.try_acquire("a", cap))  # no longer kept for it: others may take it
            done.set()
            await asyncio.Event().wait()

        task = asyncio.create_task(worker())
        await settle()
        await held.release()  # kept for the worker
        await asyncio.wait_for(woken.wait(), 5)
        await ledger.cooldown("a", 1.0)
        tried.set()
        await asyncio.wait_for(done.wait(), 5)
        assert refused == [None, None]  # refused by the cooldown both times

        fake_clock.advance(5.0)
        other = await ledger.try_acquire("a", cap)
        assert other is not None
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


_PATIENT = AgentCapacity(
    max_concurrent=1,
    backoff_strategy="constant",
    backoff_initial_ms=60_000,
    backoff_ceiling_ms=60_000,
    max_caller_retries=2,
)
"""One slot, and a caller that waits a minute between retries: only a wake-up can admit it sooner."""


class TestHandOver:
    async def test_a_slot_freed_during_a_cooldown_goes_to_the_waiter_when_it_ends(
        self, ledger: InMemoryLedger, fake_clock: FakeLoopClock
    ) -> None:
        """A lease released while its key cools down (its call answered 429, recorded before the release) is not
        handed to a waiter that cannot use it: nothing is reserved meanwhile, and the cooldown's end admits the
        waiter, not the end of its minute-long backoff window."""
        (held,) = await take(ledger, "a", _PATIENT, 1)
        waiter = asyncio.create_task(acquire("a", _PATIENT, ledger=ledger))
        await settle()
        await ledger.cooldown("a", 5)
        await held.release()
        await settle()

        assert (await ledger.status("a", _PATIENT)).blocked_by == "cooldown"  # not "slots": no slot held back
        fake_clock.advance(5)
        await settle(waiter)

        assert waiter.done()
        await waiter.result().release()

    async def test_a_slot_freed_with_the_bucket_full_goes_to_the_waiter_when_it_refills(
        self, ledger: InMemoryLedger, fake_clock: FakeLoopClock
    ) -> None:
        """The same for the rpm bucket: a release with the bucket full wakes the waiter when the bucket has room."""
        cap = _PATIENT.model_copy(update={"rpm": 6})
        for _ in range(5):
            (done,) = await take(ledger, "a", cap, 1)
            await done.release()
        (held,) = await take(ledger, "a", cap, 1)  # the sixth request: the bucket is full, the slot held
        waiter = asyncio.create_task(acquire("a", cap, ledger=ledger))
        await settle()
        await held.release()
        await settle()

        assert (await ledger.status("a", cap)).blocked_by == "rate"
        fake_clock.advance(10)  # one request leaks out of a bucket of 6 a minute
        await settle(waiter)

        assert waiter.done()
        await waiter.result().release()

    async def test_a_long_lived_task_keeps_no_callback_per_slot_it_was_handed(self, ledger: InMemoryLedger) -> None:
        """A worker task that is handed a released slot again and again (``acquire`` under contention, in a loop)
        keeps no done-callback per hand-over: what reserved the slot for it is dropped once it takes the slot."""
        me = asyncio.current_task()
        assert me is not None
        cap = AgentCapacity(max_concurrent=1)

        async def release_once_waited(held: Lease) -> None:
            await settle()
            assert (await ledger.snapshot())["a"].waiting == 1  # the worker below
            await held.release()

        async def contended_acquire() -> None:
            (held,) = await take(ledger, "a", cap, 1)
            releaser = asyncio.create_task(release_once_waited(held))
            await (await acquire("a", cap, ledger=ledger)).release()  # in this task: waits, is handed the slot
            await releaser

        await contended_acquire()
        callbacks = len(me._callbacks or ())  # type: ignore[attr-defined]  # CPython's pending done-callbacks
        for _ in range(20):
            await contended_acquire()

        assert len(me._callbacks or ()) == callbacks  # type: ignore[attr-defined]


class TestMaxQueue:
    async def test_second_waiter_over_max_queue_is_refused_at_once(
        self, ledger: InMemoryLedger, fake_clock: FakeLoopClock
    ) -> None:
        """With max_queue=1 and one caller waiting, the next caller gets QueueFull at once."""
        cap = AgentCapacity(max_concurrent=1, max_queue=1)
        await take(ledger, "a", cap, 1)
        first = wait_task(ledger, "a", cap)
        await settle()

        with pytest.raises(QueueFull, match="'a'"):
            await ledger.wait_for_change({"a": cap}, 30)
        assert not first.done()

    async def test_max_queue_zero_refuses_any_waiter(self, ledger: InMemoryLedger) -> None:
        """With max_queue=0 nobody may wait."""
        cap = AgentCapacity(max_concurrent=1, max_queue=0)
        await take(ledger, "a", cap, 1)

        with pytest.raises(QueueFull):
            await ledger.wait_for_change({"a": cap}, 30)

    async def test_queue_limit_does_not_refuse_admission(self, ledger: InMemoryLedger) -> None:
        """max_queue limits waiters only: a key with free slots still admits."""
        cap = AgentCapacity(max_concurrent=1, max_queue=0)

        assert await ledger.wait_for_change({"a": cap}, 30) is True
        assert await ledger.try_acquire("a", cap) is not None

    async def test_full_key_does_not_refuse_a_waiter_with_another_key(
        self, ledger: InMemoryLedger, fake_clock: FakeLoopClock
    ) -> None:
        """A caller refused by one key's queue may still wait on another key it named."""
        full = AgentCapacity(max_concurrent=1, max_queue=0)
        await take(ledger, "a", full, 1)
        await take(ledger, "b", full, 1)
        roomy = AgentCapacity(max_concurrent=1)
        waiter = asyncio.create_task(ledger.wait_for_change({"a": full, "b": roomy}, 30))
        await settle()

        assert not waiter.done()
        waiter.cancel()
        await settle(waiter)


class TestClose:
    async def test_aclose_wakes_waiters(self, fake_clock: FakeLoopClock) -> None:
        """Closing the ledger wakes every waiter at once."""
        ledger = InMemoryLedger()
        cap = AgentCapacity(max_concurrent=1)
        await take(ledger, "a", cap, 1)
        waiters = [wait_task(ledger, "a", cap) for _ in range(3)]
        await settle()

        await ledger.aclose()
        await settle(*waiters)

        assert all(w.done() and not w.cancelled() for w in waiters)

    @pytest.mark.parametrize(
        "call",
        [
            pytest.param(lambda led: led.try_acquire("a", AgentCapacity()), id="try_acquire"),
            pytest.param(lambda led: led.acquire_or_status("a", AgentCapacity()), id="acquire_or_status"),
            pytest.param(lambda led: led.status("a", AgentCapacity()), id="status"),
            pytest.param(lambda led: led.statuses({"a": AgentCapacity()}), id="statuses"),
            pytest.param(lambda led: led.statuses({}), id="statuses of no key"),
            pytest.param(lambda led: led.headroom("a", AgentCapacity()), id="headroom"),
            pytest.param(lambda led: led.wait_for_change({"a": AgentCapacity()}, 1), id="wait_for_change"),
            pytest.param(lambda led: led.record_tokens("a", 1), id="record_tokens"),
            pytest.param(lambda led: led.cooldown("a", 1), id="cooldown"),
            pytest.param(lambda led: led.mark_exhausted("a", 1), id="mark_exhausted"),
            pytest.param(lambda led: led.snapshot(), id="snapshot"),
        ],
    )
    async def test_calls_after_aclose_raise(self, call: object) -> None:
        """Every call after aclose raises LedgerClosed."""
        ledger = InMemoryLedger()
        await ledger.aclose()

        with pytest.raises(LedgerClosed, match="closed"):
            await call(ledger)  # type: ignore[operator]

    async def test_release_after_aclose_is_a_no_op(self) -> None:
        """A lease still held when the ledger closes releases quietly."""
        ledger = InMemoryLedger()
        held = await ledger.try_acquire("a", AgentCapacity(max_concurrent=1))
        assert held is not None
        await ledger.aclose()

        await held.release()

        assert held.released


class TestDefaultLedger:
    async def test_same_instance_within_a_loop(self) -> None:
        """Every caller on one loop shares one default ledger."""
        assert default_ledger() is default_ledger()
        assert isinstance(default_ledger(), InMemoryLedger)

    async def test_closed_default_ledger_is_replaced(self) -> None:
        """After the default ledger is closed, a fresh one takes its place."""
        closed = default_ledger()
        await closed.aclose()

        assert default_ledger() is not closed

    def test_needs_a_running_loop(self) -> None:
        """Outside an event loop there is no default ledger."""
        with pytest.raises(RuntimeError):
            default_ledger()
