"""Issue 18 on RedisLedger: service times shared by every process, so an expected wait is known across
processes and a caller that cannot be served in time fails fast (two ledgers on one real redis-server stand
for two processes)."""

from __future__ import annotations

import asyncio

import pytest

from autogen_capacity import AgentCapacity, CapacityExhausted, acquire
from autogen_capacity.ledger.redis import SERVICE_ALPHA
from redis_server import MakeLedger

pytest.importorskip("redis", reason="redis-py is not installed (pip install autogen-capacity[redis])")
pytestmark = pytest.mark.redis

ONE = AgentCapacity(max_concurrent=1, max_caller_retries=100, backoff_initial_ms=50, backoff_ceiling_ms=50)


async def _hold(ledger: object, seconds: float) -> float:
    """Take a lease, hold it ``seconds`` and release it; return how long it was held by the loop's clock."""
    lease = await ledger.try_acquire("k", ONE)  # type: ignore[attr-defined]
    assert lease is not None
    await asyncio.sleep(seconds)
    held = asyncio.get_running_loop().time() - lease.acquired_at
    await lease.release()
    return held


async def test_service_time_is_shared_by_every_process(make_ledger: MakeLedger) -> None:
    """Each release folds its hold time into one mean in Redis; a process that never held the key learns it
    when it joins the key's line."""
    a, b = make_ledger(), make_ledger()
    assert await a.service_time("k") is None
    first = await _hold(a, 0.05)
    second = await _hold(a, 0.15)
    expected = first + SERVICE_ALPHA * (second - first)

    assert await a.service_time("k") == pytest.approx(expected, abs=0.01)
    assert await b.service_time("k") is None  # nothing told it yet
    await (await b.join_queue({"k": ONE})).leave()
    assert await b.service_time("k") == pytest.approx(expected, abs=0.01)


async def test_a_wait_that_cannot_fit_fails_fast_across_processes(make_ledger: MakeLedger) -> None:
    """Another process holds the one slot and four of its callers wait; each lease is held about 0.2 s. A caller
    here with 0.5 s left would be served in about a second: it is told at once, with the expected wait as
    retry_after, and the slot's holder is still holding it."""
    other, here = make_ledger(), make_ledger()
    await _hold(other, 0.2)
    holder = await other.try_acquire("k", ONE)
    assert holder is not None
    queues = [await other.join_queue({"k": ONE}) for _ in range(4)]

    with pytest.raises(CapacityExhausted, match="expected wait in line") as raised:
        await asyncio.wait_for(acquire("k", ONE, ledger=here, deadline_s=0.5), 5)

    assert raised.value.retry_after == pytest.approx(5 * 0.2, abs=0.1)
    assert not holder.released
    for queue in queues:
        await queue.leave()
    await holder.release()


async def test_a_wait_that_fits_is_served(make_ledger: MakeLedger) -> None:
    """The same line with time enough: the caller waits and is served when the slot comes back."""
    other, here = make_ledger(), make_ledger()
    await _hold(other, 0.05)
    holder = await other.try_acquire("k", ONE)
    assert holder is not None
    waiting = asyncio.create_task(acquire("k", ONE, ledger=here, deadline_s=10))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    await holder.release()
    lease = await asyncio.wait_for(waiting, 5)
    await lease.release()
