"""The Redis ledger: one set of limits for every process and host that shares a Redis server.

The class is split by job: admission, release, status and snapshots here; the waiting lines in
``_redis_lines``, lease renewal and epochs in ``_redis_renewal``; scripts, pipelining, wake-ups and a caller's
place in ``_redis_scripts``, ``_redis_pipeline``, ``_redis_wakeups`` and ``_redis_queue``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .._logging import logger
from ..contracts import AgentCapacity
from ..deadlines import DEFAULT_ALPHA
from ..exceptions import LedgerClosed, LedgerUnavailable
from ..priority import DEFAULT_AGING_S
from ._config_model import DEFAULT_LEASE_TTL_S, LedgerConfig
from ._redis_client import build_client, redact, scan_keys, unreachable_errors
from ._redis_lines import READY_MARGIN_S, WaitingLines
from ._redis_live import Learning, LiveLimits
from ._redis_pipeline import OnOrphan, ScriptPipeline, retrying
from ._redis_queue import RedisQueue
from ._redis_renewal import LeaseRenewal
from ._redis_scripts import key_status_of, key_usage_of, limit_args, opt_arg
from ._redis_scripts import register as register_scripts
from ._redis_wakeups import WakeUps, describe, text
from .base import KeyStatus, KeyUsage, Lease, LedgerSnapshot

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript


__all__ = ["RedisLedger"]
DEFAULT_UNAVAILABLE_AFTER_S = 5.0
"""Seconds a call retries a lost connection before raising LedgerUnavailable."""
_STATE = ("slots", "meta", "tokens", "epoch", "waiters", "rank")
_USAGE = ("slots", "meta", "tokens", "waiters")
_REREGISTER_TRIES = 3
_PARTS = frozenset({"slots", "meta", "tokens", "waiters", "released"})
SERVICE_ALPHA = DEFAULT_ALPHA
"""Weight of the newest lease in a key's service time (as ``InMemoryLedger``'s)."""


class RedisLedger(LeaseRenewal, WaitingLines, LiveLimits):
    """A :class:`~autogen_capacity.CapacityLedger` on a Redis server, shared by many processes and hosts.

    Every admission is one atomic Lua script that checks and takes slots, the rpm bucket, the tpm window,
    cooldowns and exhaustion together, on Redis' own clock. Slots are lease ids in a sorted set scored by
    expiry: a lease expires ``lease_ttl_s`` after its last renewal, and a background task renews held leases
    every ``lease_ttl_s / 3`` (the renewal period), so a live long turn keeps its slot and a killed worker's
    slots come back within ``lease_ttl_s``. A release publishes the key on the namespace's channel; each
    process wakes its own best-ranked waiter for that key. Waiters are ranked in Redis, across processes, by
    priority class with aging (a free slot is kept for the waiters ranked ahead of a waiting caller; one that
    is refused simply waits again), and counted against ``max_queue``, where a lower class is shed for a
    higher one.

    A lost connection is retried (every script is idempotent: ids are made here) for ``unavailable_after_s``;
    only then does a call raise :class:`~autogen_capacity.LedgerUnavailable`: nothing is admitted blindly. A
    release, once started, lands even when its caller is cancelled; one that still cannot reach Redis is logged
    (``autogen_capacity.release_failed``), not raised, and retried in the background until it lands (at once when
    Redis answers again). A ``try_acquire`` cancelled while its script is on the way, or that raised
    ``LedgerUnavailable`` (its script may have run, its reply lost), gives back whatever the script granted.

    Each key has an epoch in Redis. When Redis lost the key's data (a restart without persistence), the first
    process that knew the old epoch fences the key: it admits nobody for one renewal period, while every live
    holder puts its leases back, and every process its waiters, with their ranks (at once when it sees the
    restart, at the latest at its next renewal). A process holding leases under an old epoch puts them back
    before it is admitted again itself.

    An adaptive key (``AgentCapacity(adaptive=True)``) has one live limit for every process, kept in Redis and
    enforced by every admission script; each process learns its answers with the same algorithm as
    ``InMemoryLedger`` and writes the result with one compare-and-set script (see ``docs/adaptive.md``).

    Scripts are pipelined: those called while a batch is on its way to Redis go together in the next one,
    so concurrent callers share round trips.

    Needs Redis 5 or later (scripts that read ``TIME`` and then write rely on effect replication). Every
    Redis key of one ledger key carries the same hash tag, ``{key}``, so each script touches one Redis
    Cluster slot. Call :meth:`aclose` when done: it stops the background listener and renewal tasks.

    Args:
        url: The Redis URL, as for ``redis.asyncio.Redis.from_url``. Credentials in it never appear in
            errors or logs.
        namespace: Prefix of every Redis key and of the wake-up channel; ledgers with the same namespace
            share their limits.
        lease_ttl_s: Seconds a lease outlives its holder's last renewal; a killed worker's slots come back
            within it. Renewals (and the fence after Redis lost its data) take a third of it.
        unavailable_after_s: Seconds a call keeps retrying a lost connection (with a backoff) before it
            raises :class:`~autogen_capacity.LedgerUnavailable`.
        client: A ``redis.asyncio.Redis`` to use instead of one built from ``url`` (not closed by
            :meth:`aclose`).
        aging_s: Seconds of waiting that lift a waiter one priority class (as ``InMemoryLedger``'s); every
            ledger sharing a namespace should use the same.

    Raises:
        ImportError: redis-py is not installed (``pip install autogen-capacity[redis]``).

    .. versionadded:: 0.1.0
    """

    __slots__ = (
        "_admitting",
        "_aging_s",
        "_client",
        "_closed",
        "_config",
        "_epochs",
        "_heartbeat",
        "_held",
        "_learning",
        "_learning_locks",
        "_live_states",
        "_ns",
        "_owns_client",
        "_pipeline",
        "_queues",
        "_releasing",
        "_renew_now",
        "_renew_pending",
        "_retry_for",
        "_scripts",
        "_service",
        "_ttl",
        "_unreachable",
        "_url",
        "_waiting",
        "_wakeups",
    )

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "autogen_capacity",
        lease_ttl_s: float = DEFAULT_LEASE_TTL_S,
        unavailable_after_s: float = DEFAULT_UNAVAILABLE_AFTER_S,
        client: Redis | None = None,
        aging_s: float = DEFAULT_AGING_S,
    ) -> None:
        self._unreachable = unreachable_errors()  # ImportError without redis-py
        if lease_ttl_s <= 0:
            raise ValueError(f"lease_ttl_s must be > 0, got {lease_ttl_s}")
        if unavailable_after_s < 0:
            raise ValueError(f"unavailable_after_s must be >= 0, got {unavailable_after_s}")
        self._url = redact(url)
        self._ns = namespace
        self._ttl = float(lease_ttl_s)
        self._retry_for = float(unavailable_after_s)
        if aging_s <= 0:
            raise ValueError(f"aging_s must be > 0, got {aging_s}")
        self._aging_s = float(aging_s)
        self._owns_client = client is None
        self._client: Redis = client or build_client(url)
        self._scripts = register_scripts(self._client)
        self._pipeline = ScriptPipeline(
            self._client,
            retry_for=self._retry_for,
            unreachable=self._unreachable,
            on_reconnect=self._renew_soon,
            shared=frozenset({self._scripts.status.sha}),  # what a status read writes is the same run twice
        )
        self._held: dict[str, str] = {}  # lease id -> key, renewed by the heartbeat
        self._admitting: dict[str, str] = {}  # lease id -> key of every acquire on its way
        self._releasing: dict[str, str] = {}  # lease id -> key of every release that has not reached Redis yet
        self._waiting: dict[str, RedisQueue] = {}  # waiter id -> its place, queued on its keys in Redis
        self._queues: dict[asyncio.Task[Any], RedisQueue] = {}  # the place each waiting task holds
        self._epochs: dict[str, str] = {}  # key -> the epoch this process last saw it in
        self._service: dict[str, float] = {}  # key -> its service time, as Redis last answered it
        self._learning: dict[str, Learning] = {}  # lease id -> how it was admitted, for held leases on adaptive keys
        self._learning_locks: dict[str, asyncio.Lock] = {}  # adaptive key -> one answer learned at a time here
        self._live_states: dict[str, tuple[str, str]] = {}  # adaptive key -> (version, state) this process last saw
        self._renew_now: asyncio.Future[None] | None = None  # the heartbeat's pause, cut short by _renew_soon
        self._renew_pending = False
        self._wakeups = WakeUps(
            self._client, self._channel, self._url, on_reconnect=self._renew_soon, reconnect_max_s=self._period
        )
        self._heartbeat: asyncio.Task[None] | None = None
        self._closed = False
        self._config: LedgerConfig | None = None  # set by ledger_from_config

    def __repr__(self) -> str:
        return f"<RedisLedger {self._url} namespace={self._ns!r}>"

    @property
    def config(self) -> LedgerConfig | None:
        """The :class:`~autogen_capacity.LedgerConfig` this ledger was built from by
        :func:`~autogen_capacity.ledger_from_config` (naming the URL's environment variable), or ``None`` for a
        ledger built from a URL: a team dumps its ledger only when it can name it without writing the URL."""
        return self._config

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called."""
        return self._closed

    # -- Redis plumbing -------------------------------------------------------------------------------

    @property
    def _channel(self) -> str:
        return f"{self._ns}:wake"

    def _name(self, key: str, part: str) -> str:
        return f"{self._ns}:{{{key}}}:{part}"

    def _unavailable(self, exc: Exception) -> LedgerUnavailable:
        logger.warning("autogen_capacity.ledger_unavailable", url=self._url, error=describe(exc))
        return LedgerUnavailable(f"Redis ledger unreachable at {self._url}: {exc}")

    async def _run(
        self,
        script: AsyncScript,
        key: str,
        parts: Sequence[str],
        args: Sequence[str | float],
        *,
        on_orphan: OnOrphan | None = None,
    ) -> Any:
        if self._closed:
            raise LedgerClosed("the ledger is closed")
        try:
            return await self._pipeline.run(script, [self._name(key, p) for p in parts], args, on_orphan=on_orphan)
        except self._unreachable as exc:
            raise self._unavailable(exc) from exc

    # -- the protocol ---------------------------------------------------------------------------------

    async def try_acquire(self, key: str, capacity: AgentCapacity) -> Lease | None:
        """Admit one unit of work on ``key`` now (one atomic script), or return ``None``. Never blocks.

        Raises:
            LedgerClosed: the ledger is (or was closed while admitting; what it granted is given back).
        """
        held = await self.acquire_or_status(key, capacity)
        return held if isinstance(held, Lease) else None

    async def acquire_or_status(
        self, key: str, capacity: AgentCapacity, *, idle_only: bool = False
    ) -> Lease | KeyStatus:
        """Admit one unit of work on ``key`` now (with ``idle_only``, only when its headroom is 1), or return the
        status that refused it: one atomic script either way. Never blocks.

        Raises:
            LedgerClosed: the ledger is (or was closed while admitting; what it granted is given back).
        """
        if self._closed:
            raise LedgerClosed("the ledger is closed")
        lease_id = uuid.uuid4().hex  # the request id: a retried script cannot take a second slot
        self._admitting[lease_id] = key
        try:
            reply = await self._admit(key, capacity, lease_id, idle_only)
        finally:
            if not self._closed:  # else aclose() gives it back, granted or not
                del self._admitting[lease_id]
        if self._closed:
            raise LedgerClosed("the ledger was closed while admitting")
        if int(reply[0]) != 1:
            status = self._status_of(key, reply[1:4])
            if status.blocked_by is not None:
                self._wakeups.refused(key)
            return status
        self._wakeups.admitted(key)
        queue = self._queues.get(asyncio.current_task()) if self._queues else None  # type: ignore[arg-type]
        if queue is not None and queue.place.woken_by == key:
            queue.place.woken_by = None  # the wake-up was used: nothing to pass on when it leaves
        self._held[lease_id] = key
        self._admitted_adaptive(lease_id, capacity, reply)
        self._ensure_heartbeat()
        return Lease(key, lease_id, asyncio.get_running_loop().time(), self._release)

    async def _admit(self, key: str, capacity: AgentCapacity, lease_id: str, idle_only: bool = False) -> Any:
        """Run the acquire script; when this process holds leases on ``key`` under an epoch Redis no longer has,
        put them back first (the script refuses to admit before that)."""
        for _ in range(_REREGISTER_TRIES):
            holding = any(k == key for k in self._held.values())
            args = [
                lease_id,
                self._ttl,
                *limit_args(capacity),
                *self._epoch_args(key),
                "1" if holding else "0",
                self._waiter_on(key),
                "1" if idle_only else "0",
            ]
            on_orphan = functools.partial(self._give_back_granted, key, lease_id)
            reply = await self._run(self._scripts.acquire, key, _STATE, args, on_orphan=on_orphan)
            epoch = reply[-1]
            if int(reply[0]) != -1:
                self._saw_epoch(key, epoch)
                return reply
            await self._renew_key(key, [i for i, k in self._held.items() if k == key], [], known=text(epoch))
        return [0, "0", "slots", ""]  # the epoch kept changing under us: refuse, the caller tries again

    async def _release(self, lease: Lease) -> None:
        self._learning.pop(lease.lease_id, None)
        if self._held.pop(lease.lease_id, None) is not None:  # else given back by aclose() already
            held_s = asyncio.get_running_loop().time() - lease.acquired_at
            await self._give_back(lease.key, lease.lease_id, held_s)

    async def _give_back(self, key: str, lease_id: str, held_s: float | None = None) -> None:
        """Release a lease in Redis (retried over a lost connection), folding the ``held_s`` seconds it was held
        into the key's service time; when Redis stays unreachable, the release is kept and the heartbeat tries it
        again until it lands. Once started, a release goes with the next batch even when its caller is cancelled
        meanwhile (only the caller's wait for it ends)."""
        self._releasing[lease_id] = key
        sent = self._pipeline.submit(
            self._scripts.release,
            [self._name(key, "slots"), self._name(key, "released"), self._name(key, "meta")],
            [lease_id, self._ttl, self._channel, key, opt_arg(held_s), SERVICE_ALPHA],
        )
        sent.add_done_callback(functools.partial(self._released, key, lease_id))
        with contextlib.suppress(*self._unreachable):  # logged by _released; the heartbeat tries again
            await asyncio.shield(sent)

    def _released(self, key: str, lease_id: str, sent: asyncio.Future[Any]) -> None:
        """A release's script landed (or failed, or its batch was dropped as the loop shuts down), whether or not
        its caller still waits for it."""
        if sent.cancelled():  # the sender was cancelled: kept for the heartbeat and aclose()
            return
        error = sent.exception()
        if error is None:
            self._releasing.pop(lease_id, None)
            self._saw_service_time(key, sent.result()[1])
        elif isinstance(error, self._unreachable):
            logger.warning("autogen_capacity.release_failed", key=key, url=self._url, error=describe(error))
            if not self._closed:
                self._ensure_heartbeat()

    def _saw_service_time(self, key: str, reply: object) -> None:
        """Keep the key's service time a script answered with (shared by every process, see ``service_time``)."""
        found = text(reply)
        if found:
            self._service[key] = float(found)

    def _waiter_on(self, key: str) -> str:
        """The calling task's waiter id in ``key``'s line ('': not in it): a free slot is kept for the waiters
        ranked ahead of it."""
        queue = self._queues.get(asyncio.current_task()) if self._queues else None  # type: ignore[arg-type]
        return queue.waiter_id if queue is not None and key in queue.waits else ""

    async def _give_back_granted(self, key: str, lease_id: str, reply: Sequence[Any] | None) -> None:
        """A ``try_acquire`` was cancelled while its script was on the way, or its batch failed (``None``: it may
        have been granted, its reply lost): give back what it was granted (released once Redis answers again)."""
        if reply is None or int(reply[0]) == 1:
            await self._give_back(key, lease_id)

    async def status(self, key: str, capacity: AgentCapacity) -> KeyStatus:
        """Whether ``key`` would admit now, its headroom, and why not."""
        args = [*limit_args(capacity), *self._epoch_args(key), self._waiter_on(key)]
        reply = await self._run(self._scripts.status, key, _STATE, args)
        self._saw_epoch(key, reply[3])
        return self._status_of(key, reply[:3])

    def _status_of(self, key: str, reply: Sequence[Any]) -> KeyStatus:
        """A script's answer (headroom, reason, ready_in) as a status, keeping the key's wake-up timer up to date."""
        status = key_status_of(reply)
        if status.ready_in is not None and self._wakeups.waiting_on(key):
            self._wakeups.ready_at(key, asyncio.get_running_loop().time() + status.ready_in + READY_MARGIN_S)
        return status

    async def headroom(self, key: str, capacity: AgentCapacity) -> float:
        """How much more ``key`` can take now, from 0 to 1."""
        return (await self.status(key, capacity)).headroom

    async def record_tokens(self, key: str, tokens: int) -> None:
        """Debit ``tokens`` from the key's tpm window."""
        if tokens > 0:
            await self._run(self._scripts.record_tokens, key, ("tokens", "meta"), [uuid.uuid4().hex, int(tokens)])

    async def cooldown(self, key: str, seconds: float) -> None:
        """Take ``key`` out of admission for ``seconds`` (extends, never shortens, a cooldown)."""
        await self._run(self._scripts.set_until, key, ("meta",), ["cd", float(seconds)])

    async def mark_exhausted(self, key: str, seconds: float) -> None:
        """Refuse ``key`` to every process sharing the namespace for ``seconds``."""
        await self._run(self._scripts.set_until, key, ("meta",), ["ex", float(seconds)])

    async def statuses(self, keys: Mapping[str, AgentCapacity]) -> dict[str, KeyStatus]:
        """:meth:`status` of several keys at once: their scripts leave in one pipelined batch."""
        found = await asyncio.gather(*(self.status(key, capacity) for key, capacity in keys.items()))
        return dict(zip(keys, found, strict=True))

    async def service_time(self, key: str) -> float | None:
        """The mean seconds a lease on ``key`` is held, over every process' releases (an exponentially weighted
        mean kept in Redis), as of this process' last release or join on the key; ``None`` before either."""
        return self._service.get(key)

    async def snapshot(self) -> LedgerSnapshot:
        """Usage per key of the namespace (found with ``SCAN``), across every process, after this process' own
        departures from the lines have landed."""
        if self._closed:
            raise LedgerClosed("the ledger is closed")
        await self._pipeline.landed()
        try:
            keys = await retrying(self._scan_keys, within=self._retry_for, unreachable=self._unreachable)
        except self._unreachable as exc:
            raise self._unavailable(exc) from exc
        usage: dict[str, KeyUsage] = {}
        for key in sorted(keys):
            usage[key] = key_usage_of(await self._run(self._scripts.usage, key, _USAGE, []))
        return usage

    async def _scan_keys(self) -> set[str]:
        return await scan_keys(self._client, self._ns, _PARTS)

    async def aclose(self) -> None:
        """Stop renewing and listening, give back leases still held and leave the queues, then close the
        client if the ledger built it. The ledger refuses work afterwards; held leases release as no-ops."""
        if self._closed:
            return
        self._closed = True
        await self._wakeups.aclose()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
        await self._pipeline.drain()  # the scripts on their way land first, so that what they granted is known
        held = {**self._releasing, **self._held, **self._admitting}  # an acquire on its way: granted or not
        self._held, self._admitting, self._releasing, waiting, self._waiting = {}, {}, {}, self._waiting, {}
        self._learning.clear()
        for lease_id, key in held.items():
            await self._give_back(key, lease_id)
        for waiter_id, queue in waiting.items():
            await self._leave_queues(waiter_id, queue.waits)
        await self._pipeline.drain()  # what cancelled callers were granted, given back
        if self._owns_client:
            await self._client.aclose()
