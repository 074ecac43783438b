"""The testing helpers: FakeLoopClock and settle()."""

from __future__ import annotations

import asyncio
import time

import pytest

from autogen_capacity import AgentCapacity, CapacityExhausted, InMemoryLedger, OverloadSignal, acquire
from autogen_capacity.admission import record_overload
from autogen_capacity.testing import FakeLoopClock, _backoff_cap, count_admission_passes, no_backoff, settle


class TestFakeLoopClock:
    async def test_starts_at_start(self) -> None:
        """The clock reads its start time until it is advanced."""
        assert FakeLoopClock().time() == 0.0
        assert FakeLoopClock(start=1000.0).time() == 1000.0

    @pytest.mark.parametrize(("steps", "expected"), [([], 5.0), ([0.0], 5.0), ([1.5], 6.5), ([1.0, 2.0, 0.25], 8.25)])
    async def test_advance_moves_forward(self, steps: list[float], expected: float) -> None:
        """advance() adds to the fake time."""
        clock = FakeLoopClock(start=5.0)

        for step in steps:
            clock.advance(step)

        assert clock.time() == expected

    @pytest.mark.parametrize("seconds", [-1.0, -0.001])
    async def test_refuses_negative_advance(self, seconds: float) -> None:
        """Time cannot go backwards, and a refused jump leaves the clock where it was."""
        clock = FakeLoopClock(start=10.0)

        with pytest.raises(ValueError, match="time cannot go backwards"):
            clock.advance(seconds)

        assert clock.time() == 10.0

    async def test_patches_the_running_loop(self) -> None:
        """Inside the context, the running loop reads the fake clock."""
        loop = asyncio.get_running_loop()

        with FakeLoopClock(start=42.0) as clock:
            assert loop.time() == 42.0
            clock.advance(8)
            assert loop.time() == 50.0

    async def test_restores_the_loop_clock_on_exit(self) -> None:
        """After the context, the loop reads its real monotonic clock again."""
        loop = asyncio.get_running_loop()

        with FakeLoopClock(start=42.0):
            pass

        assert "time" not in vars(loop)
        assert loop.time() == pytest.approx(time.monotonic(), abs=1.0)

    async def test_restores_the_loop_clock_after_an_error(self) -> None:
        """The loop's clock is restored even when the block raises."""
        loop = asyncio.get_running_loop()

        with pytest.raises(KeyError), FakeLoopClock(start=42.0):
            raise KeyError("boom")

        assert loop.time() == pytest.approx(time.monotonic(), abs=1.0)

    async def test_nested_clock_restores_the_outer_one(self) -> None:
        """Leaving an inner fake clock puts the outer fake clock back, not the real one."""
        loop = asyncio.get_running_loop()

        with FakeLoopClock(start=100.0):
            with FakeLoopClock(start=5.0):
                assert loop.time() == 5.0
            assert loop.time() == 100.0

    async def test_takes_an_explicit_loop(self) -> None:
        """A clock given a loop patches that loop."""
        loop = asyncio.get_running_loop()

        with FakeLoopClock(loop, start=7.0):
            assert loop.time() == 7.0

    async def test_timers_fire_once_time_is_advanced(self, fake_clock: FakeLoopClock) -> None:
        """A timer fires only after the fake clock reaches its deadline."""
        loop = asyncio.get_running_loop()
        fired: asyncio.Future[None] = loop.create_future()
        loop.call_at(fake_clock.time() + 5, fired.set_result, None)

        fake_clock.advance(4.999)
        await settle(fired)
        assert not fired.done()
        fake_clock.advance(0.001)
        await settle(fired)

        assert fired.done()

    async def test_wait_for_timeout_follows_the_fake_clock(self, fake_clock: FakeLoopClock) -> None:
        """asyncio timeouts run on the fake clock too."""
        waiter = asyncio.create_task(asyncio.wait_for(asyncio.Event().wait(), timeout=60))
        await settle(waiter)
        assert not waiter.done()

        fake_clock.advance(60)
        await settle(waiter)

        assert isinstance(waiter.exception(), asyncio.TimeoutError)


class TestSettle:
    async def test_runs_ready_tasks_to_completion(self) -> None:
        """Tasks that need only a few loop passes finish within settle()."""

        async def hops(n: int) -> int:
            for _ in range(n):
                await asyncio.sleep(0)
            return n

        tasks = [asyncio.create_task(hops(n)) for n in (0, 3, 10)]

        await settle(*tasks)

        assert [t.result() for t in tasks] == [0, 3, 10]

    async def test_does_not_move_time(self, fake_clock: FakeLoopClock) -> None:
        """Settling leaves the fake clock where it was."""
        await settle(rounds=50)

        assert fake_clock.time() == 1000.0

    async def test_returns_with_a_blocked_task_still_pending(self, fake_clock: FakeLoopClock) -> None:
        """A task waiting for something settle() cannot provide is left pending, not awaited forever."""
        blocked = asyncio.create_task(asyncio.Event().wait())

        await settle(blocked)

        assert not blocked.done()
        blocked.cancel()
        await settle(blocked)
        assert blocked.cancelled()

    async def test_rounds_bounds_the_passes(self) -> None:
        """settle() gives up after ``rounds`` loop passes."""

        async def hops(n: int) -> None:
            for _ in range(n):
                await asyncio.sleep(0)

        slow = asyncio.create_task(hops(100))

        await settle(slow, rounds=5)
        assert not slow.done()
        await settle(slow, rounds=200)
        assert slow.done()


class TestNoBackoff:
    async def test_caps_every_wait_inside_the_block(self) -> None:
        """Under no_backoff() a 30 s Retry-After and a 10 s schedule last 1 ms at most."""
        ledger = InMemoryLedger()
        cap = AgentCapacity(
            max_concurrent=1, backoff_initial_ms=10_000, backoff_ceiling_ms=10_000, max_caller_retries=2
        )
        with no_backoff():
            hint = OverloadSignal("throttled", 30.0)
            out_for = await record_overload(ledger, "k", hint, overloads=1, schedule=cap, exhausted_ttl_s=60)
            assert out_for == 0.001
            held = await asyncio.wait_for(acquire("k", cap, ledger=ledger), 5)
            with pytest.raises(CapacityExhausted):
                await asyncio.wait_for(acquire("k", cap, ledger=ledger), 5)
        await held.release()
        await ledger.aclose()

    async def test_outside_the_block_waits_are_untouched(self) -> None:
        """The switch is restored on the way out."""
        with no_backoff(0.5):
            assert _backoff_cap() == 0.5
        assert _backoff_cap() is None


class TestCountAdmissionPasses:
    async def test_counts_each_admission_and_its_passes(self) -> None:
        """A caller admitted at once takes one pass; one that waited for a release takes two."""
        ledger = InMemoryLedger()
        cap = AgentCapacity(max_concurrent=1)
        with count_admission_passes() as counted:
            held = await acquire("k", cap, ledger=ledger)
            waiter = asyncio.ensure_future(acquire("k", cap, ledger=ledger))
            await settle(waiter)
            await held.release()
            await (await waiter).release()
        assert (counted.admissions, counted.passes, counted.most_in_one_admission) == (2, 3, 2)
        await ledger.aclose()
