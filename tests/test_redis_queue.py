"""RedisLedger.join_queue on a real redis-server: a place in the lines taken once and kept across waits."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from autogen_capacity import AgentCapacity, KeyStatus, Lease, QueueFull
from autogen_capacity.admission import Admission, Candidate, WaitReport
from autogen_capacity.ledger.redis import RedisLedger
from orders import by_headroom
from redis_server import MakeLedger

pytest.importorskip("redis", reason="redis-py is not installed (pip install autogen-capacity[redis])")
pytestmark = pytest.mark.redis

ONE = AgentCapacity(max_concurrent=1)


class _Counted:
    """Counts the batches (round trips) a ledger sends and the scripts in them."""

    def __init__(self, ledger: RedisLedger) -> None:
        self.batches = self.scripts = 0
        self.by_name: dict[str, int] = {}
        names = {script.sha: name for name, script in ledger._scripts._asdict().items()}
        pipeline = ledger._pipeline
        send = pipeline._pipeline

        async def counted(calls: Any) -> list[Any]:
            self.batches += 1
            self.scripts += len(calls)
            for call in calls:
                name = names[call.script.sha]
                self.by_name[name] = self.by_name.get(name, 0) + 1
            return await send(calls)

        pipeline._pipeline = counted  # type: ignore[method-assign]


class _Waits:
    """An admission's observer: ``joined`` is set once it waits in the lines."""

    def __init__(self) -> None:
        self.joined = asyncio.Event()

    async def deferred(self, statuses: object, admitted: str | None) -> None:
        pass

    async def waiting(self, report: WaitReport) -> None:
        self.joined.set()


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


class TestJoinQueue:
    async def test_joins_once_and_waits_without_commands(self, make_ledger: MakeLedger) -> None:
        """Joining is one round trip for every key; waits (timed out ones included) send nothing to Redis; the
        waiter stays counted in Redis across them until it leaves (one round trip)."""
        holder, waiter = make_ledger(), make_ledger()
        assert await holder.try_acquire("a", ONE) is not None
        assert await holder.try_acquire("b", ONE) is not None
        await (await waiter.join_queue({"a": ONE})).leave()  # the scripts are loaded on the server
        await waiter._pipeline.landed()
        counted = _Counted(waiter)
        queue = await waiter.join_queue({"a": ONE, "b": ONE})
        assert (counted.batches, counted.scripts) == (1, 2)
        for _ in range(3):
            assert await queue.wait(0.05) is False
            snapshot = await holder.snapshot()
            assert (snapshot["a"].waiting, snapshot["b"].waiting) == (1, 1)
        assert (counted.batches, counted.scripts) == (1, 2)
        await queue.leave()  # here at once; in Redis with the next batch, which nobody has to wait for
        await waiter._pipeline.landed()
        assert (counted.batches, counted.scripts) == (2, 4)
        snapshot = await holder.snapshot()
        assert (snapshot["a"].waiting, snapshot["b"].waiting) == (0, 0)
        await queue.leave()  # a second leave does nothing
        assert counted.batches == 2

    async def test_keeps_its_fifo_place_across_a_timed_out_wait(self, make_ledger: MakeLedger) -> None:
        """The older of two waiters times out, waits again after the younger one began waiting, and is still the
        one a release wakes."""
        holder, waiters = make_ledger(), make_ledger()
        lease = await holder.try_acquire("k", ONE)
        assert lease is not None
        older = await waiters.join_queue({"k": ONE})
        younger = await waiters.join_queue({"k": ONE})
        assert await older.wait(0.05) is False
        younger_waits = asyncio.create_task(younger.wait(20))
        await _settle()
        older_waits = asyncio.create_task(older.wait(20))
        await _settle()
        await lease.release()
        assert await asyncio.wait_for(older_waits, 10) is True
        await asyncio.sleep(0.2)
        assert not younger_waits.done()
        await older.leave()  # without using the wake-up: it passes to the younger waiter
        assert await asyncio.wait_for(younger_waits, 10) is True
        await younger.leave()

    async def test_a_wake_up_between_waits_counts_at_once(self, make_ledger: MakeLedger) -> None:
        """A release heard while the caller was not waiting ends its next wait at once."""
        holder, waiter = make_ledger(), make_ledger()
        lease = await holder.try_acquire("k", ONE)
        assert lease is not None
        queue = await waiter.join_queue({"k": ONE})
        assert await queue.wait(0.01) is False
        await lease.release()
        await asyncio.sleep(0.3)  # the release is published and heard meanwhile
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await queue.wait(20) is True
        assert loop.time() - started < 0.1
        await queue.leave()

    async def test_a_key_that_admits_at_join_ends_the_first_wait(self, make_ledger: MakeLedger) -> None:
        """Joining the line of a key that admits now makes the first wait return at once (the place is kept)."""
        ledger = make_ledger()
        queue = await ledger.join_queue({"k": ONE})
        assert await queue.wait(20) is True
        assert (await ledger.snapshot())["k"].waiting == 1
        assert await queue.wait(0.01) is False
        await queue.leave()

    async def test_a_used_wake_up_is_not_passed_on(self, make_ledger: MakeLedger) -> None:
        """A waiter woken by a release that then takes the slot leaves without waking the next waiter."""
        holder, waiters = make_ledger(), make_ledger()
        lease = await holder.try_acquire("k", ONE)
        assert lease is not None
        joined = asyncio.Event()

        async def take() -> Any:  # in one task, as the engine does: join, wait, acquire, leave
            first = await waiters.join_queue({"k": ONE})
            joined.set()
            assert await first.wait(20) is True
            held = await waiters.try_acquire("k", ONE)
            await first.leave()
            return held

        taking = asyncio.create_task(take())
        await joined.wait()
        second = await waiters.join_queue({"k": ONE})
        second_waits = asyncio.create_task(second.wait(20))
        await _settle()
        await lease.release()
        held = await asyncio.wait_for(taking, 10)
        assert held is not None
        await asyncio.sleep(0.2)
        assert not second_waits.done()
        await held.release()
        assert await asyncio.wait_for(second_waits, 10) is True
        await second.leave()

    @pytest.mark.parametrize("admitted_elsewhere", [True, False], ids=["admitted-elsewhere", "gave-up"])
    async def test_a_slot_kept_for_a_waiter_that_leaves_is_passed_on(
        self, make_ledger: MakeLedger, admitted_elsewhere: bool
    ) -> None:
        """A waiter on two keys, woken by one, leaves the other key's line (admitted on the first, or giving up):
        the free slot kept for it there, whose release woke the waiter behind it only to be refused because of
        it, wakes that waiter at once."""
        holder, here = make_ledger(), make_ledger()
        on_a, on_b = await holder.try_acquire("a", ONE), await holder.try_acquire("b", ONE)
        assert on_a is not None
        assert on_b is not None
        await on_b.release()
        first_joined, second_refused = asyncio.Event(), asyncio.Event()

        async def first() -> Lease | KeyStatus | None:  # in one task, as the engine does: join, wait, acquire, leave
            queue = await here.join_queue({"a": ONE, "b": ONE})  # ranked ahead on "a"; "b" admits: woken at once
            first_joined.set()
            await second_refused.wait()
            assert await queue.wait(10) is True
            assert queue.woken_by == "b"
            taken = await here.acquire_or_status("b", ONE) if admitted_elsewhere else None
            await queue.leave()  # "a" never woke it: its slot, kept for it, must be passed on all the same
            return taken

        taking = asyncio.create_task(first())
        await first_joined.wait()
        second = await here.join_queue({"a": ONE})
        await on_a.release()  # wakes the best waiter on "a" not woken yet: the second one
        assert await second.wait(10) is True
        assert second.woken_by == "a"
        refused = await here.acquire_or_status("a", ONE)
        assert isinstance(refused, KeyStatus)
        assert refused.blocked_by == "slots"  # kept for the first waiter, ranked ahead
        second_refused.set()
        taken = await asyncio.wait_for(taking, 10)
        assert await second.wait(10) is True
        got = await here.acquire_or_status("a", ONE)
        assert isinstance(got, Lease)
        await second.leave()
        await got.release()
        if admitted_elsewhere:
            assert isinstance(taken, Lease)
            await taken.release()

    async def test_queue_full_at_join_counted_across_processes(self, make_ledger: MakeLedger) -> None:
        """max_queue counts a joined waiter across its waits in every process: joining a full line raises
        QueueFull; a join with room on another key queues there only; leaving makes room."""
        a, b = make_ledger(), make_ledger()
        cap = AgentCapacity(max_concurrent=1, max_queue=1)
        assert await a.try_acquire("k", cap) is not None
        assert await a.try_acquire("other", ONE) is not None
        queue = await a.join_queue({"k": cap})
        assert await queue.wait(0.01) is False
        with pytest.raises(QueueFull):
            await b.join_queue({"k": cap})
        partly = await b.join_queue({"k": cap, "other": ONE})
        snapshot = await b.snapshot()
        assert (snapshot["k"].waiting, snapshot["other"].waiting) == (1, 1)
        await partly.leave()
        await queue.leave()
        again = await b.join_queue({"k": cap})
        assert (await b.snapshot())["k"].waiting == 1
        await again.leave()

    async def test_cooldown_end_wakes_a_joined_waiter(self, make_ledger: MakeLedger) -> None:
        """A cooldown's end wakes the waiter from the key's timer; a cooldown extended meanwhile moves the timer
        with the next status read."""
        ledger = make_ledger()
        await ledger.cooldown("k", 0.2)
        queue = await ledger.join_queue({"k": ONE})
        await ledger.cooldown("k", 0.6)
        assert (await ledger.status("k", ONE)).blocked_by == "cooldown"
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await queue.wait(20) is True  # the first timer: the caller looks again and waits on
        assert (await ledger.status("k", ONE)).blocked_by == "cooldown"
        assert await queue.wait(20) is True
        assert (await ledger.status("k", ONE)).blocked_by is None
        assert loop.time() - started < 5
        await queue.leave()

    async def test_aclose_wakes_and_leaves(self, make_ledger: MakeLedger) -> None:
        """Closing the ledger wakes a joined waiter and takes it off the Redis lines; leaving afterwards is
        harmless."""
        holder, ledger = make_ledger(), make_ledger()
        assert await holder.try_acquire("k", ONE) is not None
        queue = await ledger.join_queue({"k": ONE})
        waiting = asyncio.create_task(queue.wait(20))
        await _settle()
        await ledger.aclose()
        assert await asyncio.wait_for(waiting, 5) is True
        await queue.leave()
        assert (await holder.snapshot())["k"].waiting == 0


class TestAdmissionOnRedis:
    async def test_an_admission_that_waits_joins_once(self, make_ledger: MakeLedger) -> None:
        """The engine's waits on a RedisLedger: one join and one leave whatever the number of passes, one status
        read (nothing woke it meanwhile, so the passes at the ends of its windows trust it), and two acquires:
        the first choice's before anything is read (refused), and one straight away once the release wakes it."""
        holder, ledger = make_ledger(), make_ledger()
        cap = AgentCapacity(max_concurrent=1, backoff_initial_ms=30, backoff_ceiling_ms=30, max_caller_retries=50)
        lease = await holder.try_acquire("k", cap)
        assert lease is not None
        await (await ledger.join_queue({"k": cap})).leave()  # the scripts are loaded on the server
        assert await ledger.status("k", cap) is not None
        counted = _Counted(ledger)
        admitting = asyncio.create_task(Admission(ledger).admit([Candidate("k", "k", cap)]))
        await asyncio.sleep(0.35)  # about ten windows of 30 ms, each a pass
        await lease.release()
        admitted = await asyncio.wait_for(admitting, 10)
        assert admitted is not None
        assert admitted.lease is not None
        await ledger._pipeline.landed()  # its departure from the line, which the admission did not wait for
        assert counted.by_name == {"status": 1, "enter_queue": 1, "leave_queue": 1, "acquire": 2}
        await admitted.lease.release()

    async def test_under_load_the_first_choice_is_leased_and_the_rest_read_in_one_round_trip(
        self, make_ledger: MakeLedger
    ) -> None:
        """Headroom routing after a look that found the first choice busy: the next admission sends the first
        choice's idle-only lease and the other candidates' status reads in one batch, so a first choice with room
        again is admitted in one round trip (with the others' statuses for its report)."""
        holder, ledger = make_ledger(), make_ledger()
        busy = await holder.try_acquire("a", ONE)
        assert busy is not None
        candidates = [Candidate("a", "a", ONE), Candidate("b", "b", ONE)]
        admission = Admission(ledger)
        first = await admission.admit(candidates, order=by_headroom, first_if_idle=True)
        assert first is not None
        assert first.lease is not None
        assert first.candidate.name == "b"  # "a" was busy: the admission now knows it
        await first.lease.release()
        await busy.release()
        counted = _Counted(ledger)
        again = await admission.admit(candidates, order=by_headroom, first_if_idle=True)
        assert again is not None
        assert again.lease is not None
        assert again.candidate.name == "a"
        assert (counted.batches, counted.by_name) == (1, {"acquire": 1, "status": 1})
        await again.lease.release()

    async def test_an_admitted_waiter_does_not_wait_for_its_departure_from_the_lines(
        self, make_ledger: MakeLedger
    ) -> None:
        """Leaving the lines goes to Redis with the next batch, and the admitted caller starts its turn without
        waiting for the reply (it would hold its slot a round trip longer): here Redis' reply to the departure is
        held back, and the admission still returns its lease. The caller's next script lands after the
        departure, and a snapshot waits for it."""
        holder, ledger = make_ledger(), make_ledger()
        cap = AgentCapacity(max_concurrent=1, backoff_initial_ms=30, backoff_ceiling_ms=30, max_caller_retries=50)
        lease = await holder.try_acquire("k", cap)
        assert lease is not None
        names = {script.sha: name for name, script in ledger._scripts._asdict().items()}
        pipeline, send, answer = ledger._pipeline, ledger._pipeline._pipeline, asyncio.Event()

        async def held_back(calls: Any) -> list[Any]:
            replies = await send(calls)
            if any(names[call.script.sha] == "leave_queue" for call in calls):
                await answer.wait()
            return replies

        pipeline._pipeline = held_back  # type: ignore[method-assign]
        admitting = asyncio.create_task(Admission(ledger).admit([Candidate("k", "k", cap)]))
        await asyncio.sleep(0.1)
        await lease.release()
        admitted = await asyncio.wait_for(admitting, 10)
        assert admitted is not None
        assert admitted.lease is not None
        assert (await holder.snapshot())["k"].waiting == 0  # it landed: only the reply is held back
        next_read = asyncio.create_task(ledger.status("k", cap))
        snapshot = asyncio.create_task(ledger.snapshot())
        await asyncio.sleep(0.1)
        assert not next_read.done()  # behind the departure
        assert not snapshot.done()
        answer.set()
        assert (await asyncio.wait_for(next_read, 10)).blocked_by == "slots"
        assert (await asyncio.wait_for(snapshot, 10))["k"].waiting == 0
        await admitted.lease.release()

    async def test_a_slot_kept_for_an_admission_served_elsewhere_is_passed_on(self, make_ledger: MakeLedger) -> None:
        """Two admissions wait in one process: one for keys "a" and "b", then one for "a" alone with a long backoff.
        Another process frees "b" and then "a": the first is admitted on "b", and the second gets "a" at once
        rather than after its backoff window (the slot kept for the first is passed on when it leaves)."""
        holder, here = make_ledger(), make_ledger()
        slow = AgentCapacity(max_concurrent=1, backoff_initial_ms=60_000, backoff_ceiling_ms=60_000)
        on_a, on_b = await holder.try_acquire("a", ONE), await holder.try_acquire("b", ONE)
        assert on_a is not None
        assert on_b is not None
        both, alone = _Waits(), _Waits()
        first = asyncio.create_task(
            Admission(here, observer=both).admit([Candidate("a", "a", ONE), Candidate("b", "b", ONE)])
        )
        await asyncio.wait_for(both.joined.wait(), 10)
        second = asyncio.create_task(Admission(here, observer=alone).admit([Candidate("a", "a", slow)]))
        await asyncio.wait_for(alone.joined.wait(), 10)
        await asyncio.gather(on_b.release(), on_a.release())
        served = await asyncio.wait_for(first, 10)
        assert served is not None
        assert served.lease is not None
        assert served.candidate.key == "b"
        then = await asyncio.wait_for(second, 10)
        assert then is not None
        assert then.lease is not None
        await then.lease.release()
        await served.lease.release()
