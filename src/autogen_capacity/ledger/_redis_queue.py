"""A caller's place in the Redis ledger's waiting lines, entered once and kept across waits until it leaves."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ..exceptions import QueueFull
from ._redis_wakeups import Place

if TYPE_CHECKING:
    from ..contracts import AgentCapacity

__all__ = ["RedisQueue"]


class RedisQueue:
    """One caller's place in the waiting lines of several keys of a ``RedisLedger``: queued in Redis (counted
    against ``max_queue``, renewed by the heartbeat) and in this process' wake-up lines from ``join_queue`` to
    :meth:`leave`, so a wait that times out keeps its place, and waiting again costs no Redis command."""

    __slots__ = (
        "_left",
        "_on_leave",
        "_own_wake",
        "_served_at",
        "lift",
        "place",
        "taking",
        "task",
        "waiter_id",
        "waits",
    )

    def __init__(
        self,
        waiter_id: str,
        place: Place,
        waits: dict[str, AgentCapacity],
        lift: int,
        own_wake: float | None,
        on_leave: Callable[[RedisQueue], Awaitable[None]],
        served_at: float | None = None,
    ) -> None:
        self.waiter_id = waiter_id
        self.place = place
        self.waits = waits
        """The keys it is queued on (a key whose line was full is not among them) and their contracts."""
        self.lift = lift
        """Its class's lift to the top class (its rank in Redis is when it came plus ``lift * aging_s``)."""
        self.taking: str | None = None
        """The key whose free slot the caller goes on to take itself once it left (what woke its last wait, for
        ``wait_for_change``): leaving does not pass that slot on."""
        self.task = asyncio.current_task()
        self._own_wake = own_wake
        """When a key this caller could not queue on (``max_queue``) admits again by itself, if known."""
        self._on_leave = on_leave
        self._left = False
        self._served_at = served_at
        """When it is likely served (loop time), as projected at join: the waiters then ahead of it in Redis,
        served at the keys' service times."""

    async def wait(self, timeout: float) -> bool:
        """Wait for a wake-up (one that came since the last wait counts at once) or ``timeout``.

        Raises:
            QueueFull: this caller was shed from a full line for a caller of a higher class.
        """
        place = self.place
        loop = asyncio.get_running_loop()
        if not place.future.done():
            place.woken_by = None  # the wake-up before the last wait was used by the attempt since
            until = loop.time() + max(timeout, 0.0)
            if self._own_wake is not None and self._own_wake < until:
                until = self._own_wake
            timer = loop.call_at(until, lambda: place.wake(woken=False))
            try:
                await place.future
            finally:
                timer.cancel()
        if place.shed is not None:
            raise QueueFull(f"{place.shed} (max_queue reached)")
        now = loop.time()
        woken = place.future.result() or (self._own_wake is not None and now >= self._own_wake)
        if self._own_wake is not None and now >= self._own_wake:
            self._own_wake = None
        place.future = loop.create_future()
        return woken

    @property
    def woken_by(self) -> str | None:
        """The key whose release or refill woke the last wait (``None``: not woken by one)."""
        return self.place.woken_by

    def expected_wait(self) -> float | None:
        """Seconds until this caller is likely served: what was projected when it joined, less the time since
        (never below 0: a caller still waiting past it is not told to give up); ``None`` when no key had a
        service time yet."""
        if self._served_at is None:
            return None
        return max(self._served_at - asyncio.get_running_loop().time(), 0.0)

    async def leave(self) -> None:
        """Leave every line (a second call does nothing); a wake-up this caller did not use passes on."""
        if not self._left:
            self._left = True
            await self._on_leave(self)
