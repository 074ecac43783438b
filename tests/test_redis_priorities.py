"""Issue 18 on RedisLedger: priority classes across processes (two ledgers on one real redis-server stand for two
processes): a freed slot goes to the waiter of the highest class, aging lifts a long wait, and a full line sheds
its lowest class for a higher one in whichever process it waits."""

from __future__ import annotations

import asyncio

import pytest

from autogen_capacity import AgentCapacity, Lease, QueueFull, acquire
from autogen_capacity.priority import Priority
from redis_server import MakeLedger, eventually

pytest.importorskip("redis", reason="redis-py is not installed (pip install autogen-capacity[redis])")
pytestmark = pytest.mark.redis

ONE = AgentCapacity(max_concurrent=1, max_caller_retries=1000, backoff_initial_ms=200, backoff_ceiling_ms=200)
TIMEOUT = 10.0


async def waiting(ledger: object, n: int) -> None:
    async def check() -> bool:
        usage = (await ledger.snapshot()).get("k")  # type: ignore[attr-defined]
        return usage is not None and usage.waiting == n

    await eventually(check)


def start(ledger: object, priority: Priority, cap: AgentCapacity = ONE) -> asyncio.Task[Lease]:
    return asyncio.ensure_future(acquire("k", cap, ledger=ledger, priority=priority))  # type: ignore[arg-type]


async def test_a_freed_slot_goes_to_the_higher_class_in_another_process(make_ledger: MakeLedger) -> None:
    """A default caller waits in one process, then a critical one in another: the release serves the critical
    one first, wherever it waits, and the next release the default one."""
    holder_ledger, first, second = make_ledger(), make_ledger(), make_ledger()
    holder = await holder_ledger.try_acquire("k", ONE)
    assert holder is not None
    default = start(first, "default")
    await waiting(holder_ledger, 1)
    critical = start(second, "critical")
    await waiting(holder_ledger, 2)

    await holder.release()
    served = await asyncio.wait_for(critical, TIMEOUT)
    assert not default.done()
    await served.release()
    await (await asyncio.wait_for(default, TIMEOUT)).release()


async def test_a_long_wait_is_lifted_by_aging(make_ledger: MakeLedger) -> None:
    """A default caller that has waited longer than aging_s ranks with critical ones, and before a critical one
    that came after it."""
    aging_s = 0.3
    holder_ledger, first, second = (make_ledger(aging_s=aging_s) for _ in range(3))
    holder = await holder_ledger.try_acquire("k", ONE)
    assert holder is not None
    default = start(first, "default")
    await waiting(holder_ledger, 1)
    await asyncio.sleep(aging_s * 1.5)  # time for the default caller to age one class
    critical = start(second, "critical")
    await waiting(holder_ledger, 2)

    await holder.release()
    served = await asyncio.wait_for(default, TIMEOUT)
    assert not critical.done()
    await served.release()
    await (await asyncio.wait_for(critical, TIMEOUT)).release()


async def test_a_full_line_sheds_its_lowest_class_in_another_process(make_ledger: MakeLedger) -> None:
    """At max_queue, a critical caller takes the place of the youngest sheddable waiter, whose wait, in another
    process, ends at once with QueueFull saying so; a critical caller is never shed."""
    cap = ONE.model_copy(update={"max_queue": 2})
    holder_ledger, theirs, ours = make_ledger(), make_ledger(), make_ledger()
    holder = await holder_ledger.try_acquire("k", cap)
    assert holder is not None
    older = start(theirs, "sheddable", cap)
    await waiting(holder_ledger, 1)
    younger = start(theirs, "sheddable", cap)
    await waiting(holder_ledger, 2)

    critical = start(ours, "critical", cap)
    with pytest.raises(QueueFull, match=r"a sheddable caller waiting for 'k' was shed for a critical one"):
        await asyncio.wait_for(younger, TIMEOUT)
    await waiting(holder_ledger, 2)
    assert not older.done()
    assert not critical.done()

    with pytest.raises(QueueFull):  # the full line holds nobody below a sheddable newcomer: it is refused
        await asyncio.wait_for(acquire("k", cap, ledger=ours, priority="sheddable"), TIMEOUT)
    await holder.release()
    lease = await asyncio.wait_for(critical, TIMEOUT)
    await lease.release()
    await (await asyncio.wait_for(older, TIMEOUT)).release()
