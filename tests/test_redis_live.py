"""Issue 17 on RedisLedger: one live limit per adaptive key, shared by every process (two ledgers on one real
redis-server stand for two processes), learned by the same algorithm as in memory."""

from __future__ import annotations

import asyncio
import json

import pytest

from autogen_capacity import AgentCapacity, CapacityAwareGroupChat, RedisLedger, acquire
from autogen_capacity.adaptive import LiveLimit
from autogen_capacity.ledger._learning import OVERLOAD_RATE_ALPHA
from redis_server import MakeLedger
from test_adaptive_ledger import Backend, Member, answer, take

pytest.importorskip("redis", reason="redis-py is not installed (pip install autogen-capacity[redis])")
pytestmark = pytest.mark.redis

ADAPTIVE = AgentCapacity(max_concurrent=4, adaptive=True, max_caller_retries=50, backoff_initial_ms=20)


async def live_state(ledger: RedisLedger) -> LiveLimit:
    raw = await ledger._client.hget(ledger._name("k", "meta"), "ls")
    assert raw is not None
    return LiveLimit.from_state(json.loads(raw)["live"])


async def test_a_429_seen_by_one_process_lowers_the_limit_every_process_enforces(make_ledger: MakeLedger) -> None:
    """Four leases across two processes, two answer 429 (one burst): the live limit drops once, to 2, and
    neither process is admitted past it; both snapshots show it, with its ceiling and the overload rate."""
    a, b = make_ledger(), make_ledger()
    leases = await take(a, 2, ADAPTIVE) + await take(b, 2, ADAPTIVE)

    first = await a.observe(leases[0], throttled=True)
    second = await b.observe(leases[2], throttled=True)  # same burst: admitted before the drop
    for lease in leases:
        await lease.release()

    assert first is not None
    assert (first.key, first.old, first.new, first.ceiling, first.reason) == ("k", 4, 2, 4, "throttled")
    assert second is None
    await take(b, 1, ADAPTIVE)
    await take(a, 1, ADAPTIVE)
    assert await a.try_acquire("k", ADAPTIVE) is None
    assert await b.try_acquire("k", ADAPTIVE) is None
    for ledger in (a, b):
        usage = (await ledger.snapshot())["k"]
        assert (usage.live_limit, usage.ceiling, usage.in_flight) == (2, 4, 2)
        assert usage.overload_rate == pytest.approx(
            OVERLOAD_RATE_ALPHA + OVERLOAD_RATE_ALPHA * (1 - OVERLOAD_RATE_ALPHA)
        )
        assert usage.limit_steady_for is not None
        assert 0 <= usage.limit_steady_for < 5
    assert (await live_state(a)).throttles == 2


async def test_successes_in_every_process_climb_one_limit_back(make_ledger: MakeLedger) -> None:
    """After a drop, the key serving at its live limit from two processes (turns alternate between them) grows
    back to its ceiling, a step at a time: both processes' successes count towards the one limit's windows."""
    a, b = make_ledger(), make_ledger()
    first = await take(a, 4, ADAPTIVE)
    await a.observe(first[0], throttled=True)
    for lease in first:
        await lease.release()
    changes = []
    for turn in range(1000):  # a pass ends at 4; under coverage, stalls read as latency and step it down meanwhile
        limit = (await a.snapshot())["k"].live_limit
        assert limit is not None
        if limit == 4:
            break
        ledger = (a, b)[turn % 2]
        batch = await take(ledger, limit, ADAPTIVE)
        for lease in batch:
            change = await ledger.observe(lease, throttled=False)
            if change is not None:
                changes.append(change)
            await lease.release()

    assert (await b.snapshot())["k"].live_limit == 4
    assert {c.reason for c in changes} <= {"probe", "latency"}  # real time: a stall can read as a latency rise
    assert all(c.new == c.old + 1 for c in changes if c.reason == "probe")
    assert sum(c.reason == "probe" for c in changes) >= 2  # from 2 to 4 at least


async def test_a_step_up_wakes_a_waiter_in_another_process(make_ledger: MakeLedger) -> None:
    """A waiter in process b at the live limit is admitted as soon as a step up in process a adds a slot, long
    before its backoff window ends."""
    a, b = make_ledger(), make_ledger()
    patient = ADAPTIVE.model_copy(update={"backoff_initial_ms": 60_000, "backoff_ceiling_ms": 60_000})
    first = await take(a, 4, ADAPTIVE)
    await a.observe(first[0], throttled=True)
    for lease in first:
        await lease.release()
    held = await take(a, 2, ADAPTIVE)  # at the live limit (2)
    assert await a.observe(held[1], throttled=False) is None  # one success at the limit: half a window
    await held.pop().release()
    held += await take(a, 1, ADAPTIVE)
    waiter = asyncio.ensure_future(acquire("k", patient, ledger=b))
    await asyncio.sleep(0.2)
    assert not waiter.done()

    moved = await a.observe(held[1], throttled=False)  # the window is full: one step up, no slot released

    lease = await asyncio.wait_for(waiter, 10)
    assert moved is not None
    assert (moved.old, moved.new, moved.reason) == (2, 3, "probe")
    await lease.release()
    for lease in held:
        await lease.release()


async def test_concurrent_answers_from_two_processes_are_all_learned(make_ledger: MakeLedger) -> None:
    """Answers observed at once by two processes race on the key's state: the compare-and-set makes the loser
    learn from the winner's state and write again, so no answer is lost."""
    a, b = make_ledger(), make_ledger()
    wide = AgentCapacity(max_concurrent=64, adaptive=True)
    leases = {a: await take(a, 20, wide), b: await take(b, 20, wide)}

    await asyncio.gather(*(ledger.observe(lease, throttled=True) for ledger, held in leases.items() for lease in held))

    assert (await live_state(a)).throttles == 40
    for held in leases.values():
        for lease in held:
            await lease.release()


async def test_a_restarted_empty_redis_starts_learning_again(make_ledger: MakeLedger) -> None:
    """Redis lost the key's data: once the key's fence is down, its live limit starts again at the declared
    start, and the state this process remembered is not written over the new one."""
    a = make_ledger(lease_ttl_s=0.6)  # the fence after a restart lasts one renewal period, 0.2 s
    first = await take(a, 4, ADAPTIVE)
    await a.observe(first[0], throttled=True)
    for lease in first:
        await lease.release()
    assert (await a.snapshot())["k"].live_limit == 2
    await a._client.flushall()

    lease = await asyncio.wait_for(acquire("k", ADAPTIVE, ledger=a), 10)
    assert (await a.snapshot())["k"].live_limit == 4
    await a.observe(lease, throttled=False)
    await lease.release()
    state = await live_state(a)
    assert (state.limit, state.throttles) == (4, 0)


async def test_a_plain_contract_on_redis_has_no_live_limit(make_ledger: MakeLedger) -> None:
    """Without ``adaptive=True`` a 429 changes no limit."""
    a = make_ledger()
    lease = await a.try_acquire("k", AgentCapacity(max_concurrent=4))
    assert lease is not None
    assert await a.observe(lease, throttled=True) is None
    await lease.release()
    usage = (await a.snapshot())["k"]
    assert (usage.live_limit, usage.ceiling, usage.limit_steady_for, usage.overload_rate) == (None, None, None, 0.0)


async def test_teams_in_two_processes_learn_a_backends_true_limit(make_ledger: MakeLedger) -> None:
    """Eight teams in two processes on a backend that serves 2 at once, declared 4: every run completes and the 429s
    stay a burst (at most a quarter of the calls), not a storm. (Where the live limit ends depends on how many
    calls overlap at the backend, which a slow machine changes: under coverage in CI it climbed back to 4
    without a 429, rightly. The shared limit itself is tested above and by real processes in
    test_ledger_redis.py.)"""
    backend = Backend(limit=2)
    ledgers = (make_ledger(), make_ledger())
    teams = [
        CapacityAwareGroupChat([Member(f"m{i}", backend)], name=f"t{i}", ledger=ledgers[i % 2], max_turns=6)
        for i in range(8)
    ]
    results = await asyncio.wait_for(asyncio.gather(*(t.run(task="go") for t in teams)), 60)

    assert all(r.stop_reason == "Maximum number of turns 6 reached." for r in results), [r.stop_reason for r in results]
    usage = (await ledgers[1].snapshot())["backend"]
    assert usage.live_limit is not None
    assert usage.ceiling == 4
    assert backend.throttled <= backend.calls // 4


async def test_a_throttled_keys_headroom_is_discounted_in_every_process(make_ledger: MakeLedger) -> None:
    """As in memory: a key that was just throttled reports its headroom discounted by its overload rate, so
    headroom routing in any process prefers a key with the same room that has been healthy."""
    a, b = make_ledger(), make_ledger()
    await answer(a, "throttled", throttled=True, capacity=ADAPTIVE)
    await answer(a, "healthy", throttled=False, capacity=ADAPTIVE)

    statuses = await b.statuses({"throttled": ADAPTIVE, "healthy": ADAPTIVE})

    assert statuses["throttled"].headroom == pytest.approx(1.0 - OVERLOAD_RATE_ALPHA)
    assert statuses["healthy"].headroom == 1.0
