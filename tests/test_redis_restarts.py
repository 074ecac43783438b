"""RedisLedger across Redis restarts (issue 13): stale connections, releases that must land, and the fence that
keeps every key within its limit when Redis comes back empty. Real redis-server, no persistence."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from autogen_capacity import AgentCapacity, LedgerUnavailable, QueueFull
from autogen_capacity.ledger._redis_queue import RedisQueue
from autogen_capacity.ledger.redis import RedisLedger
from redis_server import MakeLedger, RedisServer

pytest.importorskip("redis", reason="redis-py is not installed (pip install autogen-capacity[redis])")
pytestmark = pytest.mark.redis

SRC = Path(__file__).resolve().parent.parent / "src"
TTL_S = 3.0
"""Short leases: a renewal period (and a fence) of one second."""


@pytest.fixture(name="make_ledger")
def _short_leases(make_ledger: MakeLedger) -> MakeLedger:
    """The shared ledger factory with short leases (a renewal period, and a fence, of one second)."""

    def make(**kwargs: Any) -> RedisLedger:
        kwargs.setdefault("lease_ttl_s", TTL_S)
        return make_ledger(**kwargs)

    return make


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> float:
    """Poll ``check`` until it holds (failing after a generous ``timeout``); return the seconds it took."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not await check():
        assert loop.time() < started + timeout, f"condition not met within {timeout} s"
        await asyncio.sleep(0.02)
    return loop.time() - started


async def restart(server: RedisServer) -> None:
    """Stop Redis (its data is lost) and start it again; returns once it answers PING."""
    await asyncio.to_thread(server.stop)
    await asyncio.to_thread(server.start)


async def kill_connections(server: RedisServer) -> None:
    """Close every client connection from the server side, keeping the data (stale connections, no restart)."""
    from redis.asyncio import Redis

    admin = Redis.from_url(server.url)
    try:
        await admin.client_kill_filter(_type="normal", skipme=True)
    finally:
        await admin.aclose()


class TestStaleConnections:
    async def test_no_unavailable_once_redis_answers_ping(
        self, make_ledger: MakeLedger, redis_server: RedisServer
    ) -> None:
        """Calls made after a restarted Redis answers PING succeed on connections left over from the old server."""
        ledger = make_ledger()
        cap = AgentCapacity(max_concurrent=4)
        held = await asyncio.gather(*(ledger.try_acquire("k", cap) for _ in range(4)))
        for lease in held:
            assert lease is not None
            await lease.release()
        await ledger.snapshot()
        await restart(redis_server)
        lease = await ledger.try_acquire("k", AgentCapacity(rpm=100))  # no slots: no fence applies
        assert lease is not None
        assert (await ledger.status("k", AgentCapacity(rpm=100))).blocked_by is None
        assert "k" in await ledger.snapshot()
        await lease.release()

    async def test_release_on_a_stale_connection_lands(
        self, make_ledger: MakeLedger, redis_server: RedisServer
    ) -> None:
        """A release sent on a connection the server closed is sent again and lands: the slot is free at once,
        not after the lease's ttl."""
        holder, other = make_ledger(lease_ttl_s=60), make_ledger(lease_ttl_s=60)
        cap = AgentCapacity(max_concurrent=1)
        lease = await holder.try_acquire("k", cap)
        assert lease is not None
        assert await other.try_acquire("k", cap) is None
        await kill_connections(redis_server)
        await lease.release()
        assert await other.try_acquire("k", cap) is not None

    async def test_retried_acquire_takes_one_slot(self, make_ledger: MakeLedger) -> None:
        """The acquire script is idempotent for its lease id: sent twice, it takes one slot and counts once."""
        ledger = make_ledger()
        keys = [ledger._name("k", part) for part in ("slots", "meta", "tokens", "epoch", "waiters", "rank")]
        args = ["lease-1", TTL_S, "2", "", "", "", "", 1.0, "0", ""]
        first = await ledger._scripts.acquire(keys=keys, args=args)
        again = await ledger._scripts.acquire(keys=keys, args=args)
        assert int(first[0]) == int(again[0]) == 1
        usage = (await ledger.snapshot())["k"]
        assert (usage.in_flight, usage.acquired) == (1, 1)

    async def test_unreachable_past_the_bound_raises(self, redis_server: RedisServer) -> None:
        """Redis down for longer than ``unavailable_after_s``: the call raises LedgerUnavailable, after retrying."""
        ledger = RedisLedger(redis_server.url, namespace=f"u-{uuid.uuid4().hex[:8]}", unavailable_after_s=0.3)
        cap = AgentCapacity(max_concurrent=1)
        assert await ledger.try_acquire("k", cap) is not None
        await asyncio.to_thread(redis_server.stop)
        try:
            with pytest.raises(LedgerUnavailable):
                await ledger.try_acquire("k", cap)
            with pytest.raises(LedgerUnavailable):
                await ledger.snapshot()
        finally:
            await asyncio.to_thread(redis_server.start)
        await ledger.aclose()

    async def test_release_while_redis_is_down_lands_once_it_is_back(
        self, make_ledger: MakeLedger, redis_server: RedisServer
    ) -> None:
        """A release that cannot reach Redis within the bound is kept and retried until it lands."""
        holder, other = make_ledger(unavailable_after_s=0.2), make_ledger()
        cap = AgentCapacity(max_concurrent=1)
        lease = await holder.try_acquire("k", cap)
        assert lease is not None
        await asyncio.to_thread(redis_server.stop)
        try:
            await lease.release()  # logged, kept
            assert holder._releasing
        finally:
            await asyncio.to_thread(redis_server.start)

        async def landed() -> bool:
            return not holder._releasing

        await eventually(landed)
        await eventually(lambda: _admits(other, "k", cap))


async def _admits(ledger: RedisLedger, key: str, cap: AgentCapacity) -> bool:
    lease = await ledger.try_acquire(key, cap)
    if lease is None:
        return False
    await lease.release()
    return True


class TestFence:
    async def test_a_process_that_knew_the_key_fences_it_after_data_loss(
        self, make_ledger: MakeLedger, redis_server: RedisServer
    ) -> None:
        """After Redis lost its data, the first caller that knew the key's epoch fences it for one renewal
        period (a cooldown), for every caller; then it admits again."""
        knew, fresh = make_ledger(), make_ledger()
        cap = AgentCapacity(max_concurrent=2)
        assert (await knew.status("k", cap)).blocked_by is None
        await restart(redis_server)
        status = await knew.status("k", cap)
        assert status.blocked_by == "cooldown"
        assert status.ready_in is not None
        assert 0 < status.ready_in <= TTL_S / 3
        assert await fresh.try_acquire("k", cap) is None
        assert (await fresh.status("k", cap)).blocked_by == "cooldown"
        waited = await eventually(lambda: _admits(fresh, "k", cap))
        assert waited <= TTL_S / 3 + 10  # generous: never unusable for long

    async def test_no_fence_for_a_new_key(self, make_ledger: MakeLedger) -> None:
        """A key nobody knew is admitted at once: a fresh server or namespace is not fenced."""
        assert await make_ledger().try_acquire("new", AgentCapacity(max_concurrent=1)) is not None

    async def test_holder_keeps_its_slot_across_an_empty_restart(
        self, make_ledger: MakeLedger, redis_server: RedisServer
    ) -> None:
        """A slot held while Redis restarts empty is never given to another process, the holder included, and
        comes back within one renewal period of its release."""
        holder, other = make_ledger(), make_ledger()
        cap = AgentCapacity(max_concurrent=1)
        lease = await holder.try_acquire("k", cap)
        assert lease is not None
        assert await other.try_acquire("k", cap) is None
        await restart(redis_server)
        loop = asyncio.get_running_loop()
        until = loop.time() + 2 * TTL_S  # past the fence and two renewals: the holder's lease is back
        while loop.time() < until:
            assert await other.try_acquire("k", cap) is None
            assert await holder.try_acquire("k", cap) is None
            await asyncio.sleep(0.05)
        assert (await other.snapshot())["k"].in_flight == 1
        await lease.release()
        assert await other.try_acquire("k", cap) is not None


class TestWaitersAcrossRestarts:
    async def test_a_waiter_is_put_back_in_line_after_an_empty_restart(
        self, make_ledger: MakeLedger, redis_server: RedisServer
    ) -> None:
        """A caller still waiting when Redis restarts empty is put back in the key's line, with its rank, within a
        renewal period: ``max_queue`` still counts it for every process until it leaves."""
        cap = AgentCapacity(max_concurrent=1, max_queue=1)
        holder, waiting, other = make_ledger(), make_ledger(), make_ledger()
        lease = await holder.try_acquire("k", cap)
        assert lease is not None
        queue = await waiting.join_queue({"k": cap})
        with pytest.raises(QueueFull):
            await other.join_queue({"k": cap})
        rank = waiting._name("k", "rank")
        await restart(redis_server)

        async def back_in_line() -> bool:
            usage = (await other.snapshot()).get("k")
            return usage is not None and (usage.in_flight, usage.waiting) == (1, 1)

        await eventually(back_in_line)
        assert await other._client.zscore(rank, queue.waiter_id) is not None
        with pytest.raises(QueueFull):
            await other.join_queue({"k": cap})
        await queue.leave()
        await waiting._pipeline.landed()
        again = await other.join_queue({"k": cap})  # its place is free again
        await again.leave()
        await lease.release()

    async def test_a_renewal_on_its_way_does_not_put_back_a_waiter_that_left(self, make_ledger: MakeLedger) -> None:
        """A renewal that listed a waiter before it left, and reaches Redis after its departure, does not put it
        back in line (no ghost counted against ``max_queue`` or ranked ahead of the others)."""
        cap = AgentCapacity(max_concurrent=1, max_queue=1)
        holder, waiting = make_ledger(), make_ledger()
        lease = await holder.try_acquire("k", cap)
        assert lease is not None
        queue = await waiting.join_queue({"k": cap})
        assert isinstance(queue, RedisQueue)
        listed: list[str | float] = [queue.waiter_id, 0.0, queue.lift]
        await queue.leave()
        await waiting._renew_key("k", [], listed)
        assert (await holder.snapshot())["k"].waiting == 0
        await lease.release()


WORKER = """
import asyncio, json, random, sys, time
from autogen_capacity import AgentCapacity, LedgerUnavailable, acquire
from autogen_capacity.ledger.redis import RedisLedger

async def main(url, namespace, ttl, limit, tasks, seconds):
    ledger = RedisLedger(url, namespace=namespace, lease_ttl_s=ttl)
    cap = AgentCapacity(max_concurrent=limit, backoff_initial_ms=20, backoff_ceiling_ms=200,
                        max_caller_retries=100_000)
    holds, errors = [], []
    print(json.dumps({"ready": True}), flush=True)
    stop = time.time() + seconds
    async def worker():
        while time.time() < stop:
            asked = time.time()
            try:
                lease = await acquire("shared", cap, ledger=ledger)
            except LedgerUnavailable as exc:
                errors.append([asked, time.time(), str(exc)])
                await asyncio.sleep(0.05)
                continue
            start = time.time()
            await asyncio.sleep(random.uniform(0.2, 0.8))
            holds.append([start, time.time()])
            await lease.release()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    await ledger.aclose()
    print(json.dumps({"holds": holds, "errors": errors}), flush=True)

asyncio.run(main(*json.loads(sys.argv[1])))
"""


def _peak(holds: list[list[float]]) -> int:
    """The most holds in progress at once, from their own start and end times (an end before a start)."""
    events = sorted([(start, 1) for start, _ in holds] + [(end, -1) for _, end in holds], key=lambda e: (e[0], e[1]))
    now = peak = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


class TestProcesses:
    @pytest.mark.slow
    async def test_restarts_mid_run_never_exceed_the_limit(
        self, make_ledger: MakeLedger, redis_server: RedisServer
    ) -> None:
        """Three worker processes hold a max_concurrent=2 key in turns while Redis is restarted empty twice:
        from the holders' own start and end times, never more than 2 at once; no acquisition asked for after
        Redis answered PING again fails with LedgerUnavailable."""
        namespace = make_ledger()._ns
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
        args = json.dumps([redis_server.url, namespace, TTL_S, 2, 3, 9.0])
        workers = [
            await asyncio.create_subprocess_exec(
                sys.executable, "-c", WORKER, args, env=env, stdout=asyncio.subprocess.PIPE
            )
            for _ in range(3)
        ]
        for worker in workers:
            assert worker.stdout is not None
            assert json.loads(await asyncio.wait_for(worker.stdout.readline(), 60)) == {"ready": True}
        back_at: list[float] = []
        for _ in range(2):
            await asyncio.sleep(2.0)  # the workers hold slots under the current server
            await restart(redis_server)
            back_at.append(time.time())
        results = []
        for worker in workers:
            stdout, _ = await asyncio.wait_for(worker.communicate(), 90)
            assert worker.returncode == 0
            results.append(json.loads(stdout.decode().strip().splitlines()[-1]))
        holds = [hold for r in results for hold in r["holds"]]
        errors = [error for r in results for error in r["errors"]]
        assert len(holds) > 10
        assert _peak(holds) <= 2, "over-admitted across the restarts"
        late = [error for error in errors if error[0] >= back_at[0]]
        assert late == [], f"LedgerUnavailable for acquisitions asked after PING: {late}"


def test_peak_counts_overlaps() -> None:
    """The overlap measure: touching holds do not overlap, nested ones do."""
    assert _peak([[0, 1], [1, 2]]) == 1
    assert _peak([[0, 3], [1, 2], [1.5, 4]]) == 3
