"""RedisLedger when Redis ran a script but its reply was lost (the connection broke, or timed out, on the way back):
what the script did is undone or done once, never left to nobody. Real redis-server; the loss is injected in the
ledger's pipeline, after the batch has run."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from autogen_capacity import AgentCapacity, InMemoryLedger, LedgerUnavailable
from autogen_capacity.ledger.redis import RedisLedger
from redis_server import MakeLedger

pytest.importorskip("redis", reason="redis-py is not installed (pip install autogen-capacity[redis])")
pytestmark = pytest.mark.redis

ONE = AgentCapacity(max_concurrent=1)


class _LostReplies:
    """Loses the replies of a ledger's next batch after it has run in Redis; with ``cut``, every batch after it then
    fails to reach Redis too, until :meth:`heal`."""

    def __init__(self, ledger: RedisLedger) -> None:
        from redis.exceptions import ConnectionError as RedisConnectionError

        self.armed = self.cut = self._cut_after = False
        pipeline = ledger._pipeline
        send = pipeline._pipeline

        async def lossy(calls: Sequence[Any]) -> list[Any]:
            if self.cut:
                raise RedisConnectionError("Connection refused (partitioned)")
            replies = await send(calls)
            if self.armed:
                self.armed, self.cut = False, self._cut_after
                raise RedisConnectionError("Connection reset by peer (the replies are lost)")
            return replies

        pipeline._pipeline = lossy  # type: ignore[method-assign]

    def lose_next(self, *, cut: bool) -> None:
        self.armed, self._cut_after = True, cut

    def heal(self) -> None:
        self.cut = False


class TestLostReplies:
    async def test_an_acquire_whose_reply_is_lost_gives_its_slot_back(self, make_ledger: MakeLedger) -> None:
        """An acquire granted in Redis whose reply is lost raises LedgerUnavailable, and once Redis answers again
        the slot it may hold is given back at once (not after the lease's ttl): another process is woken and
        admitted."""
        ledger, other = make_ledger(lease_ttl_s=300, unavailable_after_s=0.2), make_ledger()
        warm = await ledger.try_acquire("warm", ONE)  # the scripts are loaded on the server
        assert warm is not None
        await warm.release()
        partition = _LostReplies(ledger)
        partition.lose_next(cut=True)
        with pytest.raises(LedgerUnavailable):
            await ledger.try_acquire("k", ONE)
        assert (await other.snapshot())["k"].in_flight == 1  # granted in Redis; the caller holds nothing
        partition.heal()
        assert (await ledger.status("other key", ONE)).blocked_by is None  # Redis answers again
        assert await other.wait_for_change({"k": ONE}, timeout=20) is True
        assert await other.try_acquire("k", ONE) is not None

    async def test_an_answer_whose_reply_is_lost_is_learned_once(self, make_ledger: MakeLedger) -> None:
        """The adaptive compare-and-set run again after its reply was lost learns the answer once: one throttled
        answer moves the live limit and the overload rate as on ``InMemoryLedger``, and ``observe`` says so."""
        cap = AgentCapacity(max_concurrent=8, adaptive=True)
        memory = InMemoryLedger()
        lease = await memory.try_acquire("k", cap)
        assert lease is not None
        expected = await memory.observe(lease, throttled=True)
        await lease.release()
        ledger = make_ledger(lease_ttl_s=300)
        warm = await ledger.try_acquire("warm", cap)  # the scripts are loaded on the server
        assert warm is not None
        await ledger.observe(warm, throttled=False)
        await warm.release()
        held = await ledger.try_acquire("k", cap)
        assert held is not None
        _LostReplies(ledger).lose_next(cut=False)  # the observation's batch runs, its reply is lost, it is sent again
        change = await ledger.observe(held, throttled=True)
        await held.release()
        assert expected is not None
        assert change is not None
        assert change == expected
        usage, in_memory = (await ledger.snapshot())["k"], (await memory.snapshot())["k"]
        assert (usage.live_limit, usage.overload_rate) == (in_memory.live_limit, in_memory.overload_rate)
