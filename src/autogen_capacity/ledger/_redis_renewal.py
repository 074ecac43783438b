"""Keeping a :class:`~autogen_capacity.RedisLedger`'s leases alive: the heartbeat that renews every held lease
and queued waiter each renewal period (at once when Redis comes back), puts back what Redis lost, retries
releases that did not land, and the per-key epochs that tell a restarted, emptied Redis apart."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

from .._logging import logger
from ._redis_wakeups import describe, resolve, text

if TYPE_CHECKING:
    from ._redis_pipeline import ScriptPipeline
    from ._redis_queue import RedisQueue
    from ._redis_scripts import Scripts
    from ._redis_wakeups import WakeUps

__all__ = ["LeaseRenewal"]


class _Held(Protocol):
    """What the renewal reads and calls on the ledger it keeps alive."""

    _epochs: dict[str, str]
    _heartbeat: asyncio.Task[None] | None
    _held: dict[str, str]
    _pipeline: ScriptPipeline
    _releasing: dict[str, str]
    _renew_now: asyncio.Future[None] | None
    _renew_pending: bool
    _scripts: Scripts
    _ttl: float
    _url: str
    _waiting: dict[str, RedisQueue]
    _wakeups: WakeUps

    @property
    def _period(self) -> float: ...

    def _name(self, key: str, part: str) -> str: ...

    def _renew_soon(self) -> None: ...

    async def _give_back(self, key: str, lease_id: str, held_s: float | None = None) -> None: ...

    async def _renew_while_held(self) -> None: ...

    async def _renew_all(self) -> None: ...

    async def _renew_key(
        self, key: str, lease_ids: list[str], waiters: list[str | float], known: str | None = None
    ) -> None: ...


class LeaseRenewal:
    """The renewal half of :class:`~autogen_capacity.RedisLedger` (a mixin: the ledger holds the state)."""

    __slots__ = ()

    _heartbeat: asyncio.Task[None] | None
    _renew_now: asyncio.Future[None] | None

    @property
    def _period(self: _Held) -> float:
        """The renewal period, which is also how long a key is fenced after Redis lost its data."""
        return self._ttl / 3

    def _epoch_args(self: _Held, key: str) -> list[str | float]:
        return [self._epochs.get(key, ""), self._period]

    def _saw_epoch(self: _Held, key: str, epoch: object) -> None:
        """Remember the key's epoch; a new one means Redis lost its data: put every held lease back at once."""
        seen, known = text(epoch), self._epochs.get(key)
        self._epochs[key] = seen
        if known is not None and known != seen:
            logger.warning("autogen_capacity.ledger_epoch_changed", key=key, url=self._url)
            self._renew_soon()

    def _renew_soon(self: _Held) -> None:
        """Renew every held lease now (Redis is back, or lost its data), not at the next period."""
        self._renew_pending = True
        if self._renew_now is not None:
            resolve(self._renew_now)

    def _ensure_heartbeat(self: _Held) -> None:
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = asyncio.get_running_loop().create_task(self._renew_while_held())
        self._wakeups.start()  # its connection breaks as soon as Redis goes away: a restart is seen at once

    async def _renew_while_held(self: _Held) -> None:
        """Every renewal period (at a fixed rate), or at once when Redis came back or lost its data: push the
        expiry of every held lease and queued waiter, put back leases Redis lost, and retry releases that did
        not land. Stops when there is nothing left to do."""
        loop = asyncio.get_running_loop()
        due = loop.time() + self._period
        while self._held or self._waiting or self._releasing:
            if not self._renew_pending:
                pause: asyncio.Future[None] = loop.create_future()
                self._renew_now = pause
                timer = loop.call_at(due, resolve, pause)
                try:
                    await pause
                finally:
                    timer.cancel()
                    self._renew_now = None
            self._renew_pending = False
            if loop.time() >= due:  # a regular round (not one brought forward): the next one a period later
                due = max(due + self._period, loop.time() + self._period / 2)
            await self._renew_all()
            for lease_id, key in list(self._releasing.items()):
                await self._give_back(key, lease_id)

    async def _renew_all(self: _Held) -> None:
        leases: dict[str, list[str]] = {}
        waiters: dict[str, list[str | float]] = {}
        for lease_id, key in self._held.items():
            leases.setdefault(key, []).append(lease_id)
        now = asyncio.get_running_loop().time()
        for waiter_id, queue in self._waiting.items():
            for key in queue.waits:  # its rank as an offset from now, in case Redis lost it
                waiters.setdefault(key, []).extend((waiter_id, queue.place.rank - now, queue.lift))
        await asyncio.gather(
            *(self._renew_key(k, leases.get(k, []), waiters.get(k, [])) for k in leases.keys() | waiters.keys())
        )

    async def _renew_key(
        self: _Held, key: str, lease_ids: list[str], waiters: list[str | float], known: str | None = None
    ) -> None:
        """Renew (and put back, when Redis lost them) ``key``'s leases and waiters of this process (``waiters``:
        each one's id, rank less now and class lift)."""
        known = self._epochs.get(key, "") if known is None else known
        try:
            reply = await self._pipeline.run(
                self._scripts.renew,
                [self._name(key, p) for p in ("slots", "released", "waiters", "epoch", "rank")],
                [self._ttl, len(lease_ids), known, self._period, *lease_ids, *waiters],
            )
        except Exception as exc:  # a background task: the next round tries again
            logger.warning("autogen_capacity.renew_failed", key=key, url=self._url, error=describe(exc))
            return
        self._epochs[key] = text(reply[0])
        for lease_id in reply[1:]:
            logger.warning("autogen_capacity.lease_restored", key=key, lease_id=text(lease_id))
