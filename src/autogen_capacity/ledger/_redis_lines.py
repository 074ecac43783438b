"""A :class:`~autogen_capacity.RedisLedger` caller's place in the keys' waiting lines: queued in Redis once (one
pipelined batch, counted against ``max_queue``, renewed by the heartbeat) and kept across waits; woken by this
process' wake-ups (a release, a refill or a cooldown's end)."""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Awaitable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from .._logging import logger
from ..contracts import AgentCapacity
from ..deadlines import expected_wait
from ..exceptions import LedgerClosed, QueueFull
from ..priority import TOP_RANK, Priority, rank
from ._redis_queue import RedisQueue
from ._redis_scripts import key_status_of, limit_args, opt_arg
from ._redis_wakeups import Place, text
from .base import WaitQueue

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript

    from ._redis_pipeline import OnOrphan, ScriptPipeline
    from ._redis_scripts import Scripts
    from ._redis_wakeups import WakeUps

__all__ = ["LISTEN_WAIT_S", "QUEUE_PARTS", "READY_MARGIN_S", "WaitingLines"]

LISTEN_WAIT_S = 1.0
"""How long joining a line waits for the wake-up listener's first subscription attempt, at most."""
READY_MARGIN_S = 0.001
"""Waking a moment after Redis' reported refill or cooldown's end, so the loop clock does not wake it early."""
QUEUE_PARTS = ("slots", "meta", "tokens", "waiters", "epoch", "rank", "released")
"""The Redis keys of one ledger key that entering its line reads and writes."""


class _Ledger(Protocol):
    """What the waiting lines read and call on the ledger they belong to."""

    _closed: bool
    _pipeline: ScriptPipeline
    _queues: dict[asyncio.Task[Any], RedisQueue]
    _scripts: Scripts
    _ttl: float
    _unreachable: tuple[type[Exception], ...]
    _waiting: dict[str, RedisQueue]
    _wakeups: WakeUps

    def _name(self, key: str, part: str) -> str: ...

    def _epoch_args(self, key: str) -> list[str | float]: ...

    def _saw_epoch(self, key: str, epoch: object) -> None: ...

    def _saw_service_time(self, key: str, reply: object) -> None: ...

    def _ensure_heartbeat(self) -> None: ...

    async def _run(
        self,
        script: AsyncScript,
        key: str,
        parts: Sequence[str],
        args: Sequence[str | float],
        *,
        on_orphan: OnOrphan | None = None,
    ) -> Any: ...

    async def join_queue(self, waits: Mapping[str, AgentCapacity], *, priority: Priority = "default") -> WaitQueue: ...

    async def _enter(self, key: str, capacity: AgentCapacity, waiter_id: str, priority: Priority) -> Any: ...

    @property
    def _channel(self) -> str: ...

    _aging_s: float

    async def _leave(self, queue: RedisQueue) -> None: ...

    async def _leave_entered_queue(
        self, waits: Mapping[str, AgentCapacity], waiter_id: str, reply: Sequence[Any] | None
    ) -> None: ...

    def _leave_queues(
        self,
        waiter_id: str,
        waits: Mapping[str, AgentCapacity],
        pass_on: str | None = None,
        taking: str | None = None,
    ) -> Awaitable[None]: ...


class WaitingLines:
    """The waiting half of :class:`~autogen_capacity.RedisLedger` (a mixin: the ledger holds the state)."""

    __slots__ = ()

    async def _leave_entered_queue(
        self: _Ledger, waits: Mapping[str, AgentCapacity], waiter_id: str, reply: Sequence[Any] | None
    ) -> None:
        """A join was cancelled while its ``enter_queue`` script was on the way, or its batch failed (``None``: it
        may have entered, its reply lost): leave the queue it entered."""
        if reply is None or int(reply[0]) == 1:
            await self._leave_queues(waiter_id, waits)

    async def wait_for_change(self: _Ledger, waits: Mapping[str, AgentCapacity], timeout: float) -> bool:
        """Wait for a release on one of the keys (this process' oldest waiter first), a refill or a
        cooldown's end, at most ``timeout`` seconds; ``True`` at once when one of them admits now.

        Raises:
            QueueFull: every key already has its ``max_queue`` callers waiting (across all processes), none of a
                class below ``priority``.
            LedgerUnavailable: Redis cannot be reached.
        """
        queue = await self.join_queue(waits)
        assert isinstance(queue, RedisQueue)
        try:
            woken = await queue.wait(timeout)
        except BaseException:
            await queue.leave()  # woken, then cancelled before using the wake-up: it passes to the next waiter
            raise
        queue.taking, queue.place.woken_by = queue.place.woken_by, None  # the caller tries it after this returns
        await queue.leave()
        return woken

    async def join_queue(
        self: _Ledger, waits: Mapping[str, AgentCapacity], *, priority: Priority = "default"
    ) -> WaitQueue:
        """Take a place in the waiting lines of ``waits``' keys, kept until :meth:`WaitQueue.leave`: queued in Redis
        once (one pipelined batch, counted against ``max_queue``, renewed by the heartbeat), so a wait costs no
        Redis command and one that times out keeps its place. A release wakes this process' best-ranked waiter on
        its key; a refill or a cooldown's end, one timer per key (kept up to date by every status read). The
        caller's expected wait is projected from the waiters ahead of it in Redis when it joins and the keys'
        service times.

        A freed slot goes to the waiter of the highest class, across processes, with ``priority.py``'s aging
        bound: each waiter is ranked by when it came plus ``aging_s`` for each class below critical, and a free
        slot is kept for the waiters ranked ahead of a waiting caller (a caller not in the line races for it).
        On a full line (``max_queue``) the youngest waiter of the lowest class below ``priority`` is shed, in
        whichever process it waits (its wait raises ``QueueFull``).

        Raises:
            QueueFull: every key already has its ``max_queue`` callers waiting (across all processes), none of a
                class below ``priority``.
            LedgerUnavailable: Redis cannot be reached.
        """
        if self._closed:
            raise LedgerClosed("the ledger is closed")
        loop = asyncio.get_running_loop()
        await self._wakeups.listen(LISTEN_WAIT_S)  # subscribed before looking, so no release slips through
        lift = TOP_RANK - rank(priority)
        place = Place(loop, uuid.uuid4().hex, loop.time() + lift * self._aging_s, priority)
        waiter_id = place.waiter_id
        self._wakeups.add(place, waits)
        try:
            replies = await asyncio.gather(
                *(self._enter(key, capacity, waiter_id, priority) for key, capacity in waits.items())
            )
        except BaseException as exc:
            self._wakeups.forget(place, waits)
            if isinstance(exc, Exception):  # a cancelled join leaves what it entered when the replies arrive
                await self._leave_queues(waiter_id, waits)
            raise
        queued: list[str] = []
        own_wake: float | None = None
        served_at: list[float] = []
        for key, reply in zip(waits, replies, strict=True):
            self._saw_epoch(key, reply[4])
            self._saw_service_time(key, reply[6])
            status = key_status_of(reply[1:4])
            if int(reply[0]) == 1:
                queued.append(key)
                per_slot, slots = text(reply[6]), text(reply[8])  # slots: an adaptive key's live limit
                if per_slot and slots:
                    served_at.append(loop.time() + expected_wait(int(reply[5]), int(slots), float(per_slot)))
            if status.blocked_by is None:
                place.wake(key)  # admits now: the first wait returns at once
            elif status.ready_in is not None:
                ready = loop.time() + status.ready_in + READY_MARGIN_S
                if int(reply[0]) == 1:  # one timer per key wakes this process' oldest waiter, not all of them
                    self._wakeups.ready_at(key, ready)
                else:
                    own_wake = ready if own_wake is None else min(own_wake, ready)
        self._wakeups.forget(place, [key for key in waits if key not in queued])
        if waits and not queued:
            logger.warning("autogen_capacity.queue_full", keys=list(waits))
            raise QueueFull(f"max_queue callers already wait for {', '.join(map(repr, waits))}")
        queued_on = {key: waits[key] for key in queued}
        queue = RedisQueue(waiter_id, place, queued_on, lift, own_wake, self._leave, min(served_at, default=None))
        self._waiting[waiter_id] = queue
        if queue.task is not None:
            self._queues[queue.task] = queue
        self._ensure_heartbeat()
        return queue

    async def _enter(self: _Ledger, key: str, capacity: AgentCapacity, waiter_id: str, priority: Priority) -> Any:
        args: list[str | float] = [waiter_id, self._ttl, *limit_args(capacity), opt_arg(capacity.max_queue)]
        args += [*self._epoch_args(key), TOP_RANK - rank(priority), self._aging_s, self._channel, priority, key]
        on_orphan = functools.partial(self._leave_entered_queue, {key: capacity}, waiter_id)
        return await self._run(self._scripts.enter_queue, key, QUEUE_PARTS, args, on_orphan=on_orphan)

    async def _leave(self: _Ledger, queue: RedisQueue) -> None:
        """Leave the lines of ``queue`` here at once and in Redis in the background (one pipelined batch, sent as
        soon as one can go: the caller, often just admitted, does not wait a round trip for it); a wake-up it was
        given and did not use wakes the next waiter on that key here, and Redis passes on every free slot kept
        for this caller (see :meth:`_leave_queues`)."""
        self._wakeups.forget(queue.place, queue.waits)
        if queue.task is not None and self._queues.get(queue.task) is queue:
            del self._queues[queue.task]
        woken_by = queue.place.woken_by
        if woken_by is not None:
            self._wakeups.wake_oldest(woken_by)
        if not self._closed and self._waiting.pop(queue.waiter_id, None) is not None:  # else aclose() leaves
            self._pipeline.detach(
                self._leave_queues(queue.waiter_id, queue.waits, pass_on=woken_by, taking=queue.taking)
            )

    def _leave_queues(
        self: _Ledger,
        waiter_id: str,
        waits: Mapping[str, AgentCapacity],
        pass_on: str | None = None,
        taking: str | None = None,
    ) -> Awaitable[None]:
        """Take ``waiter_id`` off the Redis lines of ``waits``' keys: the scripts go in the next batch, ahead of any
        later script of this process (so its next acquire does not find it in line); await the result for them to
        land. Whoever a key's line still holds is woken in every process (the key is published again) when the
        waiter leaves a wake-up of it unused (``pass_on``) or a free slot of it was kept for the waiter: however it
        leaves (admitted on another key, giving up, cancelled), a slot kept for it is not left idle; except on
        ``taking``, the key whose slot the caller goes on to take itself."""
        script = self._scripts.leave_queue
        sent = [
            self._pipeline.submit(
                script,
                [self._name(k, p) for p in ("waiters", "rank", "slots", "meta", "released")],
                [waiter_id, self._channel, k, _leaving(k, pass_on, taking), *limit_args(capacity), self._ttl],
            )
            for k, capacity in waits.items()
        ]
        return _landed(sent, self._unreachable)


def _leaving(key: str, pass_on: str | None, taking: str | None) -> str:
    """How a waiter leaves ``key``'s line, as the leave script reads it: ``pass`` (with a wake-up of the key unused),
    ``take`` (to take the key's slot itself), else '' (a free slot kept for it passes on)."""
    return "pass" if key == pass_on else "take" if key == taking else ""


async def _landed(sent: Sequence[asyncio.Future[Any]], unreachable: tuple[type[Exception], ...]) -> None:
    """Wait for scripts submitted to the pipeline; Redis being unreachable is not an error (a waiter's entry
    expires within the lease ttl)."""
    for reply in await asyncio.gather(*sent, return_exceptions=True):
        if isinstance(reply, BaseException) and not isinstance(reply, unreachable):
            raise reply
