"""RedisLedger on a real redis-server: the in-memory ledger's behaviours, and exactness across processes."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import DataError

from autogen_capacity import (
    AgentCapacity,
    CapacityExhausted,
    CapacityLedger,
    InMemoryLedger,
    KeyStatus,
    Lease,
    LedgerClosed,
    LedgerUnavailable,
    QueueFull,
    acquire,
)
from autogen_capacity.ledger._config_model import INSTALL_HINT
from autogen_capacity.ledger._redis_client import hiredis_packing
from autogen_capacity.ledger.redis import RedisLedger
from redis_server import MakeLedger, RedisServer, eventually, free_port

pytest.importorskip("redis", reason="redis-py is not installed (pip install autogen-capacity[redis])")
pytestmark = pytest.mark.redis

SRC = Path(__file__).resolve().parent.parent / "src"


@pytest.fixture(name="redis_ledger")
def _redis_ledger(make_ledger: MakeLedger) -> RedisLedger:
    """One ledger on the test's namespace."""
    return make_ledger()


async def _done(tasks: list[asyncio.Task[Any]], n: int) -> bool:
    return sum(task.done() for task in tasks) >= n


class TestAdmission:
    async def test_is_a_capacity_ledger(self, redis_ledger: RedisLedger) -> None:
        """RedisLedger satisfies the CapacityLedger protocol."""
        assert isinstance(redis_ledger, CapacityLedger)

    async def test_admits_exactly_max_concurrent(self, make_ledger: MakeLedger) -> None:
        """max_concurrent=2 admits exactly two leases across clients, and one more after a release."""
        a, b = make_ledger(), make_ledger()
        cap = AgentCapacity(max_concurrent=2)
        first = await a.try_acquire("k", cap)
        assert first is not None
        assert (await b.status("k", cap)).headroom == 0.5
        second = await b.try_acquire("k", cap)
        assert second is not None
        assert await a.try_acquire("k", cap) is None
        assert await b.try_acquire("k", cap) is None
        status = await a.status("k", cap)
        assert (status.headroom, status.blocked_by, status.ready_in) == (0.0, "slots", None)
        await first.release()
        assert await b.headroom("k", cap) == 0.5
        assert await b.try_acquire("k", cap) is not None
        assert await a.try_acquire("k", cap) is None

    async def test_release_is_idempotent(self, make_ledger: MakeLedger) -> None:
        """A second release gives nothing back twice: the count never drifts below the leases held."""
        a, b = make_ledger(), make_ledger()
        cap = AgentCapacity(max_concurrent=1)
        lease = await a.try_acquire("k", cap)
        assert lease is not None
        async with lease:
            assert await b.try_acquire("k", cap) is None
        await lease.release()
        await lease.release()
        other = await b.try_acquire("k", cap)
        assert other is not None
        await lease.release()
        assert await a.try_acquire("k", cap) is None
        usage = (await a.snapshot())["k"]
        assert (usage.in_flight, usage.acquired) == (1, 2)

    async def test_no_drift_after_many_cycles(self, redis_ledger: RedisLedger) -> None:
        """Hundreds of concurrent acquire/release cycles leave nothing in flight and the limit exact."""
        cap = AgentCapacity(max_concurrent=3)

        async def cycle() -> int:
            lease = await redis_ledger.try_acquire("k", cap)
            if lease is None:
                return 0
            await asyncio.sleep(0)
            await lease.release()
            return 1

        admitted = sum(await asyncio.gather(*(cycle() for _ in range(300))))
        usage = (await redis_ledger.snapshot())["k"]
        assert (usage.in_flight, usage.acquired) == (0, admitted)
        held = [await redis_ledger.try_acquire("k", cap) for _ in range(4)]
        assert [lease is not None for lease in held] == [True, True, True, False]

    async def test_unbounded_contract_is_idle(self, redis_ledger: RedisLedger) -> None:
        """A contract without limits always admits with headroom 1."""
        assert await redis_ledger.status("k", AgentCapacity()) == (await InMemoryLedger().status("k", AgentCapacity()))
        assert await redis_ledger.try_acquire("k", AgentCapacity()) is not None

    async def test_rpm_bucket(self, make_ledger: MakeLedger) -> None:
        """rpm=6 admits a burst of 6 across clients, then says the next slot leaks in 10 s."""
        a, b = make_ledger(), make_ledger()
        cap = AgentCapacity(rpm=6)
        admitted = [await (a if i % 2 else b).try_acquire("k", cap) is not None for i in range(7)]
        assert admitted == [True] * 6 + [False]
        status = await a.status("k", cap)
        assert status.blocked_by == "rate"
        assert status.ready_in is not None
        assert 9.0 < status.ready_in <= 10.0

    async def test_rpm_refills(self, redis_ledger: RedisLedger) -> None:
        """rpm=120 leaks 2 a second: a drained bucket admits again half a second later."""
        cap = AgentCapacity(rpm=120)
        # One pipelined batch: 120 acquires one round trip at a time took over 0.5 s under coverage in CI, long
        # enough for the bucket to leak a request before the check.
        assert all(await asyncio.gather(*(redis_ledger.try_acquire("k", cap) for _ in range(120))))
        assert await redis_ledger.try_acquire("k", cap) is None
        status = await redis_ledger.status("k", cap)
        assert status.ready_in is not None
        assert 0.0 < status.ready_in <= 0.5
        await asyncio.sleep(status.ready_in + 0.1)
        assert await redis_ledger.try_acquire("k", cap) is not None

    async def test_fractional_rpm_allows_one(self, redis_ledger: RedisLedger) -> None:
        """rpm below 1 still admits one request (burst = max(rpm, 1))."""
        cap = AgentCapacity(rpm=0.5)
        assert await redis_ledger.try_acquire("k", cap) is not None
        assert await redis_ledger.try_acquire("k", cap) is None

    async def test_tpm_window(self, make_ledger: MakeLedger) -> None:
        """Recorded tokens reduce headroom; at the tpm limit the key waits for the oldest entry to leave."""
        a, b = make_ledger(), make_ledger()
        cap = AgentCapacity(tpm=100)
        await a.record_tokens("k", 60)
        await a.record_tokens("k", 0)
        assert await b.headroom("k", cap) == pytest.approx(0.4)
        await b.record_tokens("k", 50)
        status = await a.status("k", cap)
        assert status.blocked_by == "tpm"
        assert status.ready_in is not None
        assert 55.0 < status.ready_in <= 60.0
        assert await a.try_acquire("k", cap) is None
        assert (await a.snapshot())["k"].tokens_last_minute == 110

    async def test_cooldown_extends_never_shortens(self, make_ledger: MakeLedger) -> None:
        """A cooldown blocks every client until it ends; a shorter one does not cut it."""
        a, b = make_ledger(), make_ledger()
        cap = AgentCapacity(max_concurrent=5)
        await a.cooldown("k", 0.4)
        await b.cooldown("k", 0.05)
        status = await b.status("k", cap)
        assert status.blocked_by == "cooldown"
        assert status.ready_in is not None
        assert 0.2 < status.ready_in <= 0.4
        assert await b.try_acquire("k", cap) is None
        assert (await b.snapshot())["k"].cooling_down_for > 0.2
        await asyncio.sleep(status.ready_in + 0.1)
        assert await b.try_acquire("k", cap) is not None

    async def test_exhausted_wins_over_cooldown(self, make_ledger: MakeLedger) -> None:
        """An exhausted key is refused to every client sharing the namespace, and reported as exhausted."""
        a, b = make_ledger(), make_ledger()
        await a.cooldown("k", 5)
        await a.mark_exhausted("k", 30)
        status = await b.status("k", AgentCapacity())
        assert status.blocked_by == "exhausted"
        assert status.ready_in is not None
        assert 29.0 < status.ready_in <= 30.0
        assert await b.try_acquire("k", AgentCapacity()) is None
        assert (await b.snapshot())["k"].exhausted_for > 29.0

    @pytest.mark.parametrize(
        "cap",
        [
            AgentCapacity(max_concurrent=3),
            AgentCapacity(max_concurrent=4, rpm=3),
            AgentCapacity(max_concurrent=2, tpm=1000),
            AgentCapacity(rpm=2, tpm=50),
        ],
    )
    async def test_same_status_as_in_memory(self, redis_ledger: RedisLedger, cap: AgentCapacity) -> None:
        """The same operations give the same headroom and blocking reason as the in-memory ledger. (The two reads
        are instants apart and an rpm bucket refills in between: 0.05 requests a second at rpm=3, so headrooms
        agree to within 0.01 and not to the digit; rounding both made a flaky test under load.)"""
        memory = InMemoryLedger()

        for step in range(5):
            on_redis, in_memory = await redis_ledger.status("k", cap), await memory.status("k", cap)
            assert on_redis.blocked_by == in_memory.blocked_by, f"step {step}"
            assert on_redis.headroom == pytest.approx(in_memory.headroom, abs=0.01), f"step {step}"
            await redis_ledger.record_tokens("k", 20)
            await memory.record_tokens("k", 20)
            got = [await redis_ledger.try_acquire("k", cap), await memory.try_acquire("k", cap)]
            assert (got[0] is None) == (got[1] is None), f"step {step}"
        await memory.aclose()

    async def test_snapshot_scans_only_its_namespace(self, make_ledger: MakeLedger) -> None:
        """snapshot lists this namespace's keys (odd characters included) and none of another's."""
        mine, other = make_ledger(), make_ledger(namespace=f"other-{uuid.uuid4().hex[:8]}")
        odd = "team:a}{b*"
        assert await mine.try_acquire(odd, AgentCapacity(max_concurrent=2)) is not None
        await mine.record_tokens("t", 5)
        await other.cooldown("elsewhere", 5)
        snapshot = await mine.snapshot()
        assert set(snapshot) == {odd, "t"}
        assert snapshot[odd].in_flight == 1
        assert snapshot["t"].tokens_last_minute == 5
        assert set(await other.snapshot()) == {"elsewhere"}


class TestWaiting:
    async def test_woken_by_release_from_another_client(self, make_ledger: MakeLedger) -> None:
        """A waiter is woken by a release made through another client, long before its timeout."""
        holder, waiter = make_ledger(), make_ledger()
        cap = AgentCapacity(max_concurrent=1)
        lease = await holder.try_acquire("k", cap)
        assert lease is not None
        loop = asyncio.get_running_loop()
        started = loop.time()
        wait = asyncio.create_task(waiter.wait_for_change({"k": cap}, timeout=20))
        await asyncio.sleep(0.2)
        assert not wait.done()
        assert (await holder.snapshot())["k"].waiting == 1
        await lease.release()
        assert await wait is True
        assert loop.time() - started < 10
        assert (await waiter.snapshot())["k"].waiting == 0  # its departure from the line has landed

    async def test_times_out(self, redis_ledger: RedisLedger) -> None:
        """Without a release or a refill the wait ends with False after its timeout."""
        cap = AgentCapacity(max_concurrent=1)
        assert await redis_ledger.try_acquire("k", cap) is not None
        assert await redis_ledger.wait_for_change({"k": cap}, timeout=0.2) is False

    async def test_returns_at_once_when_admissible(self, redis_ledger: RedisLedger) -> None:
        """A key that admits now ends the wait at once."""
        assert await redis_ledger.wait_for_change({"k": AgentCapacity(max_concurrent=1)}, timeout=30) is True

    async def test_woken_when_cooldown_ends(self, redis_ledger: RedisLedger) -> None:
        """A cooldown ending before the timeout wakes the waiter with True (ready_in is the fallback)."""
        await redis_ledger.cooldown("k", 0.2)
        assert await redis_ledger.wait_for_change({"k": AgentCapacity()}, timeout=20) is True

    async def test_cooldown_end_wakes_as_many_as_it_admits(self, redis_ledger: RedisLedger) -> None:
        """Four callers in one process wait out a cooldown on a two-slot key: two are admitted, and the
        other two are not woken to be refused (one timer per key, each admission waking the next)."""
        cap = AgentCapacity(max_concurrent=2)
        await redis_ledger.cooldown("k", 0.3)

        async def wait_then_take() -> Lease | None:
            await redis_ledger.wait_for_change({"k": cap}, timeout=20)
            return await redis_ledger.try_acquire("k", cap)

        callers = [asyncio.create_task(wait_then_take()) for _ in range(4)]
        await eventually(lambda: _done(callers, 3))  # two admitted, the third woken and refused: chain ends
        done, pending = await asyncio.wait(callers, timeout=1.0)  # with a herd, the fourth ends at once too
        admitted = [task.result() for task in done if task.result() is not None]
        assert len(admitted) == 2
        assert len(pending) == 1
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for held in admitted:
            assert held is not None
            await held.release()

    async def test_one_release_wakes_the_oldest_waiter(self, make_ledger: MakeLedger) -> None:
        """In one process, a release wakes one waiter, the oldest; the next release wakes the next."""
        holder, waiters = make_ledger(), make_ledger()
        cap = AgentCapacity(max_concurrent=2)
        leases = [await holder.try_acquire("k", cap) for _ in range(2)]
        first = asyncio.create_task(waiters.wait_for_change({"k": cap}, timeout=20))
        await asyncio.sleep(0.1)
        second = asyncio.create_task(waiters.wait_for_change({"k": cap}, timeout=20))
        await asyncio.sleep(0.2)
        assert leases[0] is not None
        assert leases[1] is not None
        await leases[0].release()
        assert await first is True
        await asyncio.sleep(0.3)
        assert not second.done()
        await leases[1].release()
        assert await second is True

    async def test_queue_full(self, make_ledger: MakeLedger) -> None:
        """max_queue counts waiters of every client; one more is refused at once with QueueFull."""
        a, b = make_ledger(), make_ledger()
        cap = AgentCapacity(max_concurrent=1, max_queue=1)
        assert await a.try_acquire("k", cap) is not None
        waiting = asyncio.create_task(a.wait_for_change({"k": cap}, timeout=20))
        await asyncio.sleep(0.2)
        with pytest.raises(QueueFull):
            await b.wait_for_change({"k": cap}, timeout=20)
        with pytest.raises(QueueFull):
            await b.wait_for_change({"k": cap.model_copy(update={"max_queue": 0})}, timeout=20)
        roomy = AgentCapacity(max_concurrent=1)
        assert await b.try_acquire("other", roomy) is not None
        assert await b.wait_for_change({"k": cap, "other": roomy}, timeout=0.1) is False
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert (await b.snapshot())["k"].waiting == 0
        assert await b.wait_for_change({"k": cap}, timeout=0.1) is False


class _ObservedClient:
    """A redis-py client whose pipelines are counted and can run a hook just before and after they execute."""

    def __init__(self, url: str) -> None:
        from redis.asyncio import Redis

        self.client = Redis.from_url(url)
        self.pipelines = 0
        self.before: Callable[[], None] = lambda: None
        self.after: Callable[[], None] = lambda: None
        make_pipeline = self.client.pipeline

        def pipeline(*args: Any, **kwargs: Any) -> Any:
            self.pipelines += 1
            pipe = make_pipeline(*args, **kwargs)
            execute = pipe.execute

            async def hooked_execute(**options: Any) -> Any:
                self.before()
                replies = await execute(**options)
                self.after()
                return replies

            pipe.execute = hooked_execute  # type: ignore[method-assign]
            return pipe

        self.client.pipeline = pipeline  # type: ignore[method-assign]


@pytest.fixture(name="observed")
async def _observed(redis_server: RedisServer) -> AsyncIterator[tuple[_ObservedClient, RedisLedger]]:
    """A ledger over an observed client, on a fresh namespace."""
    observed = _ObservedClient(redis_server.url)
    ledger = RedisLedger("redis://ignored", client=observed.client, namespace=f"p-{uuid.uuid4().hex[:8]}")
    yield observed, ledger
    await ledger.aclose()
    await observed.client.aclose()


class TestPipelining:
    async def test_concurrent_callers_share_round_trips(self, observed: tuple[_ObservedClient, RedisLedger]) -> None:
        """64 concurrent acquires go to Redis in a couple of pipelines, not 64 round trips, and all succeed."""
        client, ledger = observed
        cap = AgentCapacity(max_concurrent=64)
        leases = await asyncio.gather(*(ledger.try_acquire("k", cap) for _ in range(64)))
        assert all(lease is not None for lease in leases)
        assert 1 <= client.pipelines <= 2
        assert (await ledger.snapshot())["k"].in_flight == 64

    async def test_an_admission_that_gets_its_first_choice_is_one_round_trip(
        self, observed: tuple[_ObservedClient, RedisLedger]
    ) -> None:
        """acquire() on a key with room: one script, no status read before it; refused, it reads, then waits."""
        client, ledger = observed
        cap = AgentCapacity(max_concurrent=1, backoff_initial_ms=10, backoff_ceiling_ms=10, max_caller_retries=3)
        await (await acquire("warm", cap, ledger=ledger)).release()  # Redis loads the script (a second batch)
        client.pipelines = 0
        lease = await acquire("k", cap, ledger=ledger)
        assert client.pipelines == 1
        with pytest.raises(CapacityExhausted):
            await acquire("k", cap, ledger=ledger)
        assert client.pipelines > 2  # the refused lease, then the status read, the line, the retries
        await lease.release()

    async def test_a_refused_acquire_answers_the_status_that_refused_it_in_the_same_script(
        self, observed: tuple[_ObservedClient, RedisLedger]
    ) -> None:
        """acquire_or_status on a full key: one script, whose refusal is the key's status (what a status read
        answers), with nothing taken."""
        client, ledger = observed
        cap = AgentCapacity(max_concurrent=1)
        held = await ledger.acquire_or_status("k", cap)  # Redis loads the script
        assert isinstance(held, Lease)
        client.pipelines = 0
        refused = await ledger.acquire_or_status("k", cap)
        assert client.pipelines == 1
        assert refused == KeyStatus(0.0, "slots")
        assert refused == await ledger.status("k", cap)
        assert (await ledger.snapshot())["k"].in_flight == 1
        await held.release()
        again = await ledger.acquire_or_status("k", cap)
        assert isinstance(again, Lease)
        await again.release()

    async def test_idle_only_leases_a_key_with_room_for_anything_and_else_answers_its_status(
        self, redis_ledger: RedisLedger
    ) -> None:
        """idle_only (headroom routing's first choice): a key with headroom 1 is leased; a key partly used is not,
        and the answer is its status (open, half the headroom), with nothing taken."""
        two = AgentCapacity(max_concurrent=2)
        held = await redis_ledger.acquire_or_status("k", two, idle_only=True)
        assert isinstance(held, Lease)
        assert await redis_ledger.acquire_or_status("k", two, idle_only=True) == KeyStatus(0.5)
        assert (await redis_ledger.snapshot())["k"].in_flight == 1
        other = await redis_ledger.acquire_or_status("k", two)
        assert isinstance(other, Lease)
        await held.release()
        await other.release()

    async def test_identical_status_reads_in_a_batch_run_once(self, redis_ledger: RedisLedger) -> None:
        """Sixteen teams reading the same key's status at once cost Redis one script, and all get its answer; reads
        with other arguments, and acquires, each run (an acquire is never shared)."""

        async def scripts_run() -> int:
            stats = await redis_ledger._client.info("commandstats")
            return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))

        cap, other = AgentCapacity(max_concurrent=4), AgentCapacity(max_concurrent=8)
        await redis_ledger.status("k", cap)  # the scripts are loaded in Redis, the key exists: no reload below
        warm = await redis_ledger.try_acquire("k", cap)
        assert warm is not None
        await warm.release()
        before = await scripts_run()
        reads = await asyncio.gather(
            *(redis_ledger.status("k", cap) for _ in range(16)), redis_ledger.status("k", other)
        )
        assert await scripts_run() - before == 2
        assert reads[:16] == [KeyStatus(1.0)] * 16
        assert reads[16] == KeyStatus(1.0)

        before = await scripts_run()
        leases = await asyncio.gather(*(redis_ledger.try_acquire("k", cap) for _ in range(6)))
        assert await scripts_run() - before == 6
        assert sum(lease is not None for lease in leases) == 4

    async def test_one_failing_script_fails_only_its_caller(self, redis_ledger: RedisLedger) -> None:
        """A script error (here a Redis key of the wrong type) is its caller's; the rest of the batch succeeds."""
        from redis.exceptions import ResponseError

        await redis_ledger._client.set(redis_ledger._name("broken", "slots"), "not a sorted set")
        cap = AgentCapacity(max_concurrent=1)
        broken, fine = await asyncio.gather(
            redis_ledger.try_acquire("broken", cap), redis_ledger.try_acquire("fine", cap), return_exceptions=True
        )
        assert isinstance(broken, ResponseError)
        assert isinstance(fine, Lease)

    async def test_scripts_flushed_from_redis_are_loaded_again(self, redis_ledger: RedisLedger) -> None:
        """After ``SCRIPT FLUSH`` (as after a restart) the next calls load the scripts and succeed."""
        cap = AgentCapacity(max_concurrent=2)
        assert await redis_ledger.try_acquire("k", cap) is not None
        await redis_ledger._client.script_flush()
        assert await redis_ledger.try_acquire("k", cap) is not None
        assert await redis_ledger.try_acquire("k", cap) is None

    async def test_acquire_cancelled_before_its_batch_leaves_never_reaches_redis(
        self, observed: tuple[_ObservedClient, RedisLedger]
    ) -> None:
        """A caller cancelled before the sender runs is dropped from the batch: nothing is sent for it."""
        client, ledger = observed
        acquiring = asyncio.ensure_future(ledger.try_acquire("k", AgentCapacity(max_concurrent=1)))
        await asyncio.sleep(0)  # queued for the next batch, which has not left
        acquiring.cancel()
        with pytest.raises(asyncio.CancelledError):
            await acquiring
        assert await ledger.try_acquire("other", AgentCapacity(max_concurrent=1)) is not None
        assert client.pipelines == 1  # the second acquire's batch only
        assert "k" not in await ledger.snapshot()

    async def test_release_cancelled_before_its_batch_leaves_lands_at_once(self, make_ledger: MakeLedger) -> None:
        """A release whose caller is cancelled before its batch has left still lands with that batch, not at the
        heartbeat's next round (here 100 s away): another process is woken by it and admitted."""
        ledger, other = make_ledger(lease_ttl_s=300), make_ledger()
        cap = AgentCapacity(max_concurrent=1)
        lease = await ledger.try_acquire("k", cap)
        assert lease is not None
        releasing = asyncio.ensure_future(lease.release())
        await asyncio.sleep(0)  # queued for the next batch, which has not left
        releasing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await releasing
        assert await other.wait_for_change({"k": cap}, timeout=20) is True
        assert await other.try_acquire("k", cap) is not None
        assert ledger._releasing == {}

    @pytest.mark.parametrize("cancelled", ["with its script on the way", "with its reply in hand"])
    async def test_cancelled_acquire_gives_back_its_slot(
        self, observed: tuple[_ObservedClient, RedisLedger], make_ledger: MakeLedger, cancelled: str
    ) -> None:
        """An acquire cancelled once its script has left (before or after the reply arrives) does not leave
        a slot nobody holds: what the script granted is given back."""
        client, ledger = observed
        cap = AgentCapacity(max_concurrent=1)
        acquiring = asyncio.ensure_future(ledger.try_acquire("k", cap))
        if cancelled == "with its script on the way":
            client.before = acquiring.cancel
        else:  # the caller is cancelled in the same turn of the loop as its reply is handed to it
            client.after = lambda: asyncio.get_running_loop().call_soon(acquiring.cancel)
        with pytest.raises(asyncio.CancelledError):
            await acquiring
        client.before = client.after = lambda: None
        await ledger.aclose()  # waits for the batch and the give-back
        other = make_ledger(namespace=ledger._ns)
        assert (await other.snapshot())["k"].in_flight == 0
        assert await other.try_acquire("k", cap) is not None

    async def test_cancelled_wait_leaves_the_queue_it_entered(
        self, observed: tuple[_ObservedClient, RedisLedger], make_ledger: MakeLedger
    ) -> None:
        """A wait cancelled while its queue entry was on the way leaves that queue (no one stays counted
        against ``max_queue``)."""
        client, ledger = observed
        cap = AgentCapacity(max_concurrent=1, max_queue=1)
        holder = make_ledger(namespace=ledger._ns)
        assert await holder.try_acquire("k", cap) is not None
        waits: list[asyncio.Future[bool]] = []
        client.before = lambda: waits[0].cancel()  # the next batch is the wait's queue entry
        waiting = asyncio.ensure_future(ledger.wait_for_change({"k": cap}, timeout=5))
        waits.append(waiting)
        with pytest.raises(asyncio.CancelledError):
            await waiting
        client.before = lambda: None
        await ledger.aclose()
        assert (await holder.snapshot())["k"].waiting == 0

    async def test_acquire_on_its_way_when_the_ledger_closes_is_given_back(
        self, observed: tuple[_ObservedClient, RedisLedger], make_ledger: MakeLedger
    ) -> None:
        """Closing the ledger while an acquire is on its way refuses it with LedgerClosed and gives back
        whatever it was granted."""
        client, ledger = observed
        cap = AgentCapacity(max_concurrent=1)
        closing: list[asyncio.Task[None]] = []
        client.before = lambda: closing.append(asyncio.ensure_future(ledger.aclose()))
        with pytest.raises(LedgerClosed):
            await ledger.try_acquire("k", cap)
        client.before = lambda: None
        await asyncio.gather(*closing)
        other = make_ledger(namespace=ledger._ns)
        assert (await other.snapshot())["k"].in_flight == 0

    async def test_cancelling_aclose_does_not_cancel_other_callers(
        self, observed: tuple[_ObservedClient, RedisLedger]
    ) -> None:
        """``aclose()`` cancelled while it waits for a batch leaves that batch (and its callers) alone."""
        client, ledger = observed
        cap = AgentCapacity(max_concurrent=2)
        tasks: list[asyncio.Future[Any]] = []

        def first_batch() -> None:  # a second caller joins the next batch, then the ledger starts closing
            tasks.append(asyncio.ensure_future(ledger.try_acquire("k", cap)))
            tasks.append(asyncio.ensure_future(ledger.aclose()))
            client.before = second_batch

        def second_batch() -> None:
            client.before = lambda: None
            tasks[1].cancel()  # aclose() is waiting for this batch

        client.before = first_batch
        with pytest.raises(LedgerClosed):
            await ledger.try_acquire("k", cap)
        second, closing = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(closing, asyncio.CancelledError)
        assert isinstance(second, LedgerClosed)  # refused by the closing ledger, not cancelled

    async def test_failed_orphan_handler_is_logged(
        self, observed: tuple[_ObservedClient, RedisLedger], caplog: pytest.LogCaptureFixture
    ) -> None:
        """An orphan handler that fails is logged, not left as a never-retrieved task exception."""
        client, ledger = observed

        async def failing(reply: Any) -> None:
            raise RuntimeError("cannot undo")

        calls: list[asyncio.Future[Any]] = []
        client.before = lambda: calls[0].cancel()
        keys = [ledger._name("k", part) for part in ("slots", "meta", "tokens", "epoch", "waiters", "rank")]
        args: list[str | float] = ["", "", "", "", "", 1.0, ""]
        calls.append(asyncio.ensure_future(ledger._pipeline.run(ledger._scripts.status, keys, args, on_orphan=failing)))
        with caplog.at_level(logging.WARNING, logger="autogen_capacity"), pytest.raises(asyncio.CancelledError):
            await calls[0]
        await ledger._pipeline.drain()
        assert "autogen_capacity.orphan_failed" in caplog.text
        assert "cannot undo" in caplog.text

    async def test_failed_reload_fails_only_the_calls_that_needed_it(
        self, observed: tuple[_ObservedClient, RedisLedger]
    ) -> None:
        """When reloading a flushed script fails, only the calls of that script fail; the others in the batch
        keep their replies."""
        from redis.exceptions import ConnectionError as RedisConnectionError

        client, ledger = observed
        cap = AgentCapacity(max_concurrent=1)
        await client.client.script_flush()
        await client.client.script_load(ledger._scripts.status.script)  # only the status script is known

        async def unreachable(*args: Any) -> Any:
            raise RedisConnectionError("gone")

        client.client.script_load = unreachable  # type: ignore[method-assign]
        status, acquired = await asyncio.gather(
            ledger.status("a", cap), ledger.try_acquire("b", cap), return_exceptions=True
        )
        assert status == KeyStatus(1.0)
        assert isinstance(acquired, LedgerUnavailable)


class TestPacking:
    """The ledger's own client packs commands with hiredis, byte for byte as redis-py does."""

    ARGS: tuple[tuple[Any, ...], ...] = (
        ("EVALSHA", "a" * 40, 3, "ns:{k}:slots", "ns:{k}:meta", 1.5, 0.30000000000000004, 1e-07, -0, 2**70),
        ("SET", "ns:{é}:meta", b"\xff\x00", "µ"),
        ("CONFIG GET", "maxmemory"),
        ("SET", "k", memoryview(b"view")),
    )

    def test_commands_are_packed_by_hiredis_as_redis_py_packs_them(self) -> None:
        from redis.asyncio.connection import Connection, UnixDomainSocketConnection

        for url, base in (("redis://127.0.0.1:1/0", Connection), ("unix:///tmp/none.sock", UnixDomainSocketConnection)):
            ledger = RedisLedger(url)
            pool = ledger._client.connection_pool
            packed = pool.connection_class
            assert issubclass(packed, base)
            assert packed.pack_command is not base.pack_command
            connection, reference = packed(**pool.connection_kwargs), base(**pool.connection_kwargs)
            for args in self.ARGS:
                assert b"".join(connection.pack_command(*args)) == b"".join(reference.pack_command(*args))
            with pytest.raises(DataError):
                connection.pack_command("SET", "k", True)

    def test_redis_py_packs_without_hiredis_or_in_another_encoding(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from redis.asyncio.connection import Connection

        assert (
            RedisLedger("redis://127.0.0.1:1/0?encoding=latin-1")._client.connection_pool.connection_class is Connection
        )
        monkeypatch.setitem(sys.modules, "hiredis", None)
        assert hiredis_packing(Connection) is Connection


class TestLifecycle:
    async def test_closed_ledger_refuses_work(self, make_ledger: MakeLedger) -> None:
        """After aclose the ledger raises LedgerClosed; held leases were given back."""
        closing, other = make_ledger(), make_ledger()
        cap = AgentCapacity(max_concurrent=1)
        lease = await closing.try_acquire("k", cap)
        assert lease is not None
        await closing.aclose()
        await lease.release()  # a no-op
        assert await other.try_acquire("k", cap) is not None
        with pytest.raises(LedgerClosed):
            await closing.try_acquire("k", cap)
        with pytest.raises(LedgerClosed):
            await closing.snapshot()
        with pytest.raises(LedgerClosed):
            await closing.wait_for_change({"k": cap}, timeout=1)

    async def test_given_client_is_not_closed(self, redis_server: RedisServer) -> None:
        """A client passed in stays open after aclose."""
        from redis.asyncio import Redis

        client = Redis.from_url(redis_server.url)
        ledger = RedisLedger("redis://ignored", client=client, namespace=f"c-{uuid.uuid4().hex[:8]}")
        assert await ledger.try_acquire("k", AgentCapacity(max_concurrent=1)) is not None
        await ledger.aclose()
        assert await client.ping()
        await client.aclose()

    def test_needs_redis_py(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without redis-py the module imports, and building a ledger says what to install."""
        monkeypatch.setitem(sys.modules, "redis.asyncio", None)
        with pytest.raises(ImportError, match=r"pip install autogen-capacity\[redis\]") as caught:
            RedisLedger("redis://localhost")
        assert str(caught.value) == INSTALL_HINT

    async def test_unreachable_redis_raises(self) -> None:
        """Nothing listening: every call raises LedgerUnavailable naming the address, never the password."""
        ledger = RedisLedger(f"redis://user:s3cret@127.0.0.1:{free_port()}/0", unavailable_after_s=0.2)
        cap = AgentCapacity(max_concurrent=1)
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: ledger.try_acquire("k", cap),
            lambda: ledger.status("k", cap),
            lambda: ledger.wait_for_change({"k": cap}, timeout=5),
            ledger.snapshot,
            lambda: ledger.cooldown("k", 1),
        ]
        for call in calls:
            with pytest.raises(LedgerUnavailable, match=r"127\.0\.0\.1") as caught:
                await call()
            assert "s3cret" not in str(caught.value)
        await ledger.aclose()

    async def test_renewal_keeps_a_live_holder(self, make_ledger: MakeLedger) -> None:
        """A lease held, and a wait kept, well past the ttl keep their slot and queue place while alive."""
        holder, other = make_ledger(lease_ttl_s=0.6), make_ledger(lease_ttl_s=0.6)
        cap = AgentCapacity(max_concurrent=1)
        lease = await holder.try_acquire("k", cap)
        assert lease is not None
        wait = asyncio.create_task(holder.wait_for_change({"k": cap}, timeout=30))
        for _ in range(10):
            await asyncio.sleep(0.2)
            assert await other.try_acquire("k", cap) is None
        usage = (await other.snapshot())["k"]
        assert (usage.in_flight, usage.waiting) == (1, 1)
        await lease.release()
        assert await wait is True
        assert await other.try_acquire("k", cap) is not None

    async def test_restart_recovers(self, make_ledger: MakeLedger, redis_server: RedisServer) -> None:
        """Redis going away (past ``unavailable_after_s``) raises LedgerUnavailable; once it is back, admission
        (after the fence) and wake-ups work again."""
        a, b = make_ledger(lease_ttl_s=3.0, unavailable_after_s=0.5), make_ledger(lease_ttl_s=3.0)
        cap = AgentCapacity(max_concurrent=1)
        assert await a.wait_for_change({"k": cap}, timeout=1) is True  # the listener is subscribed
        redis_server.stop()
        try:
            with pytest.raises(LedgerUnavailable):
                await a.try_acquire("k", cap)
        finally:
            redis_server.start()

        async def admits() -> bool:
            try:
                lease = await a.try_acquire("k", cap)
            except LedgerUnavailable:
                return False
            if lease is None:  # fenced for a renewal period: a knew the key before Redis lost it
                return False
            await lease.release()
            return True

        await eventually(admits)

        async def woken_by_release() -> bool:
            lease = await b.try_acquire("k", cap)
            assert lease is not None
            wait = asyncio.create_task(a.wait_for_change({"k": cap}, timeout=3))
            await asyncio.sleep(0.1)
            await lease.release()
            return await wait

        await eventually(woken_by_release, timeout=20)

    async def test_held_lease_is_restored_after_data_loss(
        self, make_ledger: MakeLedger, redis_server: RedisServer
    ) -> None:
        """A lease held while Redis restarts empty is put back by its renewal: the limit still holds; once
        released, the slot is free again after the fence (a renewal period)."""
        holder, other = make_ledger(lease_ttl_s=0.6), make_ledger(lease_ttl_s=0.6)
        cap = AgentCapacity(max_concurrent=1)
        lease = await holder.try_acquire("k", cap)
        assert lease is not None
        redis_server.stop()
        redis_server.start()

        async def restored() -> bool:
            return (await other.snapshot()).get("k") is not None

        await eventually(restored)
        assert await other.try_acquire("k", cap) is None
        await lease.release()

        async def admits() -> bool:
            return await other.try_acquire("k", cap) is not None

        await eventually(admits)


WORKER = """
import asyncio, json, random, sys
from redis.asyncio import Redis
from autogen_capacity import AgentCapacity, acquire
from autogen_capacity.ledger.redis import RedisLedger

async def main(url, namespace, mode, key, ttl, n_tasks, rounds):
    ledger = RedisLedger(url, namespace=namespace, lease_ttl_s=ttl)
    probe = Redis.from_url(url)
    if mode == "hammer":
        cap = AgentCapacity(max_concurrent=3, backoff_initial_ms=20, backoff_ceiling_ms=100,
                            max_caller_retries=10_000)
        peak = 0
        async def worker():
            nonlocal peak
            for _ in range(rounds):
                async with await acquire(key, cap, ledger=ledger):
                    peak = max(peak, await probe.incr(namespace + ":probe"))
                    await asyncio.sleep(random.uniform(0.002, 0.015))
                    await probe.decr(namespace + ":probe")
        await asyncio.gather(*(worker() for _ in range(n_tasks)))
        print(json.dumps({"peak": peak, "holds": n_tasks * rounds}), flush=True)
    elif mode == "rpm":
        cap = AgentCapacity(rpm=3)
        admitted = 0
        for _ in range(rounds):
            if await ledger.try_acquire(key, cap) is not None:
                admitted += 1
                await probe.incr(namespace + ":admitted")
        print(json.dumps({"admitted": admitted}), flush=True)
    elif mode == "adaptive":  # a backend that serves 3 at once behind a contract declaring 8
        cap = AgentCapacity(max_concurrent=8, adaptive=True, backoff_initial_ms=10, backoff_ceiling_ms=50,
                            max_caller_retries=10_000)
        answers = {"throttled": 0, "served": 0}
        async def caller():
            for _ in range(rounds):
                async with await acquire(key, cap, ledger=ledger) as lease:
                    try:
                        throttled = await probe.incr(namespace + ":backend") > 3
                        if not throttled:
                            await asyncio.sleep(random.uniform(0.005, 0.015))
                        await ledger.observe(lease, throttled=throttled)
                        answers["throttled" if throttled else "served"] += 1
                    finally:
                        await probe.decr(namespace + ":backend")
        await asyncio.gather(*(caller() for _ in range(n_tasks)))
        print(json.dumps(answers), flush=True)
    elif mode == "hold":
        assert await ledger.try_acquire(key, AgentCapacity(max_concurrent=1)) is not None
        print(json.dumps({"held": True}), flush=True)
        await asyncio.sleep(120)
    await probe.aclose()
    await ledger.aclose()

asyncio.run(main(*json.loads(sys.argv[1])))
"""


async def spawn(url: str, namespace: str, mode: str, *, ttl: float = 30.0, tasks: int = 1, rounds: int = 1) -> Any:
    """Run the worker script in a new Python process."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    args = json.dumps([url, namespace, mode, "shared", ttl, tasks, rounds])
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", WORKER, args, env=env, stdout=asyncio.subprocess.PIPE
    )


async def result(process: Any, timeout: float = 45.0) -> dict[str, Any]:
    """The worker's JSON line, once it has exited successfully."""
    stdout, _ = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode == 0
    line: dict[str, Any] = json.loads(stdout.decode().strip().splitlines()[-1])
    return line


class TestProcesses:
    async def test_never_exceed_max_concurrent(self, make_ledger: MakeLedger, redis_server: RedisServer) -> None:
        """Three processes of many tasks each never hold more than max_concurrent at once, and all finish."""
        ledger = make_ledger()
        namespace = ledger._ns  # the workers join the test's namespace
        workers = [await spawn(redis_server.url, namespace, "hammer", tasks=6, rounds=8) for _ in range(3)]
        results = [await result(worker) for worker in workers]
        assert sum(r["holds"] for r in results) == 3 * 6 * 8
        peak = max(r["peak"] for r in results)
        assert 2 <= peak <= 3
        usage = (await ledger.snapshot())["shared"]
        assert (usage.in_flight, usage.waiting, usage.acquired) == (0, 0, 3 * 6 * 8)

    async def test_rpm_holds_across_processes(self, make_ledger: MakeLedger, redis_server: RedisServer) -> None:
        """rpm=3 admits exactly 3 requests in total across three processes trying 4 times each."""
        ledger = make_ledger()
        namespace = ledger._ns
        workers = [await spawn(redis_server.url, namespace, "rpm", rounds=4) for _ in range(3)]
        results = [await result(worker) for worker in workers]
        assert sum(r["admitted"] for r in results) == 3
        assert (await ledger.snapshot())["shared"].acquired == 3

    async def test_one_live_limit_learned_by_every_process(
        self, make_ledger: MakeLedger, redis_server: RedisServer
    ) -> None:
        """Three processes of six callers each, on a backend that serves 3 at once behind contracts that declare 8
        (adaptive): every answer of every process is learned (the throttles in the shared state, or still filed in
        Redis, are the throttles the workers saw), few answers are 429s, and the one live limit ends at or under the
        backend's 3, or one step above it when that step is a probe no call has answered yet."""
        ledger = make_ledger()
        namespace = ledger._ns
        workers = [await spawn(redis_server.url, namespace, "adaptive", tasks=6, rounds=15) for _ in range(3)]
        results = [await result(worker) for worker in workers]

        throttled = sum(r["throttled"] for r in results)
        assert sum(r["throttled"] + r["served"] for r in results) == 3 * 6 * 15
        assert throttled <= 3 * 6 * 15 // 5  # 10 of 270 when measured
        state = json.loads(await ledger._client.hget(ledger._name("shared", "meta"), "ls"))
        filed = [json.loads(a) for a in await ledger._client.lrange(ledger._name("shared", "answers"), 0, -1)]
        assert state["live"]["throttles"] + sum(a[0] for a in filed) == throttled
        usage = (await ledger.snapshot())["shared"]
        assert usage.live_limit is not None
        probing = state["live"]["last_change"] is not None and state["live"]["last_change"][3] == "probe"
        assert 1 <= usage.live_limit <= (4 if probing else 3)
        assert usage.ceiling == 8

    async def test_killed_holder_gives_its_slot_back(self, make_ledger: MakeLedger, redis_server: RedisServer) -> None:
        """A holder alive past its ttl keeps its slot; killed with SIGKILL, its slot comes back within the ttl."""
        ledger = make_ledger()
        namespace = ledger._ns
        cap = AgentCapacity(max_concurrent=1)
        holder = await spawn(redis_server.url, namespace, "hold", ttl=1.0)
        try:
            assert holder.stdout is not None
            line = await asyncio.wait_for(holder.stdout.readline(), 30)
            assert json.loads(line) == {"held": True}
            await asyncio.sleep(1.5)  # past the ttl: renewed by the live holder
            assert await ledger.try_acquire("shared", cap) is None
        finally:
            holder.send_signal(signal.SIGKILL)
            await holder.wait()
        loop = asyncio.get_running_loop()
        killed_at = loop.time()

        async def admits() -> bool:
            return await ledger.try_acquire("shared", cap) is not None

        await eventually(admits, timeout=15)
        assert loop.time() - killed_at < 10
