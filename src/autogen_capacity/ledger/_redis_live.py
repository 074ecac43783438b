"""Live limits on a :class:`~autogen_capacity.RedisLedger`: one per key, shared by every process.

Redis holds the key's live limit (``lv`` in its meta hash), which every admission script enforces, the state it
was learned from (``ls``: :meth:`~autogen_capacity.adaptive.LiveLimit.to_state` and the overload rate) with a
version (``lver``), and a list of answers no process has learned yet (``answers``). A process learns with the
algorithm in Python, as ``InMemoryLedger`` does, and writes the result with one compare-and-set script
(``_redis_scripts.LEARN``): it commits only when the state is the one it learned on and no answer is waiting in
the list. Otherwise the script files the process' answer in the list and hands back the state and every waiting
answer; the process learns them all, in order, and tries again. An answer is in the state or in the list, never lost:
one a process gives up on (after ``_TRIES`` races) stays in the list for the next answer on the key to learn.

Answers on one key are learned one at a time in each process, so only processes race, never the tasks of one;
a process keeps the state it last wrote, so a lone process commits in one script per answer.

Times are on Redis' clock: a lease's admission time is the acquire script's, and its answer's is that plus the
seconds the lease has been held here.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .._logging import logger
from ..adaptive import LiveLimit
from ..contracts import AgentCapacity
from ._learning import Answer, moved, overload_rate
from ._redis_wakeups import text
from .base import Lease, LiveLimitChange

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript

    from ._redis_scripts import Scripts

__all__ = ["Learning", "LiveLimits"]

_TRIES = 8


@dataclass(frozen=True, slots=True)
class Learning:
    """A lease on an adaptive key, as the acquire script admitted it."""

    capacity: AgentCapacity
    in_flight: int
    """Leases on the key when it was admitted, itself included (across processes)."""
    admitted_at: float
    """Redis' clock at the admission."""
    loop_at: float
    """This loop's clock at the admission."""


class _Ledger(Protocol):
    _learning: dict[str, Learning]
    _learning_locks: dict[str, asyncio.Lock]
    _live_states: dict[str, tuple[str, str]]
    _scripts: Scripts
    _retry_for: float
    _ttl: float

    @property
    def _channel(self) -> str: ...

    async def _run(self, script: AsyncScript, key: str, parts: Any, args: Any) -> Any: ...

    async def _learn(self, key: str, capacity: AgentCapacity, answer: Answer) -> LiveLimitChange | None: ...


class LiveLimits:
    """The live-limit half of :class:`~autogen_capacity.RedisLedger` (a mixin: the ledger holds the state)."""

    __slots__ = ()

    def _admitted_adaptive(self: _Ledger, lease_id: str, capacity: AgentCapacity, reply: Any) -> None:
        """Remember what an adaptive key's acquire script answered, to learn from the lease's answer."""
        if capacity.adaptive and capacity.max_concurrent is not None:
            now = asyncio.get_running_loop().time()
            self._learning[lease_id] = Learning(capacity, int(reply[1]), float(text(reply[2])), now)

    async def observe(self: _Ledger, lease: Lease, *, throttled: bool) -> LiveLimitChange | None:
        """What ``lease``'s call answered (before it is released): an adaptive key's live limit, shared by every
        process, drops on a throttled answer (once per burst) and climbs back as the key serves at its limit."""
        seen = self._learning.get(lease.lease_id)
        if seen is None:
            return None
        held_s = max(asyncio.get_running_loop().time() - seen.loop_at, 0.0)
        answer = Answer(throttled, seen.in_flight, seen.admitted_at, seen.admitted_at + held_s)
        async with self._learning_locks.setdefault(lease.key, asyncio.Lock()):
            return await self._learn(lease.key, seen.capacity, answer)

    async def _learn(self: _Ledger, key: str, capacity: AgentCapacity, answer: Answer) -> LiveLimitChange | None:
        ceiling = capacity.max_concurrent
        assert ceiling is not None
        own = json.dumps([answer.throttled, answer.in_flight, answer.admitted_at, answer.at])
        listed: list[str] = []
        for _ in range(_TRIES):
            version, state = self._live_states.get(key, ("", ""))
            live, rate = _restore(state, capacity)
            before = live.limit
            for found in listed if own == "" else [*listed, own]:
                learned = Answer(*json.loads(found))
                learned.teach(live)
                rate = overload_rate(rate, throttled=learned.throttled)
            if live.ceiling != ceiling:
                live.set_ceiling(ceiling, answer.at)
            written = json.dumps({"live": live.to_state(), "rate": rate})
            args = [version, written, live.limit, ceiling, repr(rate), "1" if live.limit != before else "0"]
            args += [len(listed), own, self._channel, key, max(live.limit - before, 0)]
            args += [uuid.uuid4().hex, self._retry_for + self._ttl]  # a retried script learns its answer once
            reply = await self._run(self._scripts.learn, key, ("meta", "answers", "learned"), args)
            if int(reply[0]) == 1:
                if text(reply[1]):
                    self._live_states[key] = (text(reply[1]), written)
                else:  # committed by an earlier run of this call, whose reply was lost: the state may have moved on
                    self._live_states.pop(key, None)
                return moved(key, before, live)
            self._live_states[key] = (text(reply[1]), text(reply[2]))  # another process learned first
            listed, own = [text(found) for found in reply[3:]], ""  # ours is in the list now
        logger.warning("autogen_capacity.live_limit_contended", key=key, tries=_TRIES)
        return None


def _restore(state: str, capacity: AgentCapacity) -> tuple[LiveLimit, float]:
    """The live limit and overload rate ``state`` holds; a new limit when there is none yet."""
    if not state:
        assert capacity.max_concurrent is not None
        return LiveLimit(capacity.max_concurrent, capacity.initial_concurrent), 0.0
    found = json.loads(state)
    return LiveLimit.from_state(found["live"]), float(found["rate"])
