"""This process' side of waking the Redis ledger's waiters: per key, oldest first, by a release published on the
namespace's channel (one listener per ledger) or by the key's refill or cooldown's end (one timer per key)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from .._logging import logger

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["PUBSUB_IDLE_S", "Place", "WakeUps", "describe", "resolve", "text"]

SHED_PREFIX = "shed "
"""A message on the channel that names a waiter shed from a full line (a ledger key names a release)."""
PUBSUB_IDLE_S = 15.0
"""How long the listener waits for a message before checking its connection again."""
_RECONNECT_MAX_S = 2.0


class Place:
    """One caller's place in this process' lines, kept from one wait to the next: ``future`` is resolved with
    ``True`` by a wake-up (with ``False`` by the caller's own timer) and replaced by a fresh one after each wait.
    A place whose wake-up has not been waited for yet is passed over by the next wake-up, as the oldest waiter
    that was already woken is (``woken_by``: the key whose release or refill woke it, until it is used)."""

    __slots__ = ("future", "priority", "rank", "shed", "waiter_id", "woken_by")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, waiter_id: str = "", rank: float = 0.0, priority: str = "default"
    ) -> None:
        self.future: asyncio.Future[bool] = loop.create_future()
        self.woken_by: str | None = None
        self.waiter_id = waiter_id
        self.priority = priority
        self.rank = rank
        """Its order in this process' lines: when it came plus its class's lift (lower is served first)."""
        self.shed: str | None = None
        """Why it was shed from a full line for a caller of a higher class (its next wait raises)."""

    def wake(self, key: str | None = None, *, woken: bool = True) -> bool:
        """Resolve the current future (``False``: it was already woken). A wake-up still reaches a place whose
        own timer ended its wait a moment ago and that has not looked yet: it is the one to serve."""
        if self.future.done():
            if not woken or self.future.result():
                return False
            self.future = self.future.get_loop().create_future()
        self.future.set_result(woken)
        if woken:
            self.woken_by = key
        return True


class WakeUps:
    """The waiters of one ledger in this process, per key and oldest first, and what wakes them.

    A release wakes the oldest waiter on its key (the listener hears it on the namespace's channel). A refill or
    a cooldown's end wakes the oldest one too, from one timer per key; each admission it leads to wakes the next
    (:meth:`admitted`), until one is refused (:meth:`refused`), so a refill that admits several wakes several.
    """

    def __init__(
        self,
        client: Redis,
        channel: str,
        url: str,
        *,
        on_reconnect: Callable[[], None] = lambda: None,
        reconnect_max_s: float = _RECONNECT_MAX_S,
    ) -> None:
        self._client = client
        self._channel = channel
        self._url = url
        self._on_reconnect = on_reconnect
        self._reconnect_max_s = min(reconnect_max_s, _RECONNECT_MAX_S)
        self._waiters: dict[str, deque[Place]] = {}  # per key, by rank
        self._places: dict[str, Place] = {}  # waiter id -> place, to be told it was shed
        self._ready: dict[str, asyncio.TimerHandle] = {}
        self._chain: set[str] = set()  # keys whose refill woke a waiter
        self._listener: asyncio.Task[None] | None = None
        self._closing = False  # redis-py may turn the listener's cancellation into a ConnectionError
        self._listening = asyncio.Event()  # set once the listener made its first subscription attempt

    async def listen(self, timeout: float) -> None:
        """Start the listener if needed and wait (at most ``timeout``) for its first subscription attempt, so that
        no release slips through between a caller's look at Redis and its wait."""
        self.start()
        if not self._listening.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._listening.wait(), max(timeout, 0.0))

    def start(self) -> None:
        """Start the listener unless it runs."""
        if not self._closing and (self._listener is None or self._listener.done()):
            self._listener = asyncio.get_running_loop().create_task(self._listen())

    def add(self, waiter: Place, keys: Iterable[str]) -> None:
        """Queue ``waiter`` on each of ``keys``, after the places ranked before or with it."""
        for key in keys:
            line = self._waiters.setdefault(key, deque())
            at = len(line)
            while at > 0 and line[at - 1].rank > waiter.rank:
                at -= 1
            line.insert(at, waiter)
        self._places[waiter.waiter_id] = waiter

    def shed(self, waiter_id: str, key: str, newcomer: str) -> None:
        """A full line in Redis dropped ``waiter_id`` for a ``newcomer`` of a higher class: its wait raises."""
        waiter = self._places.get(waiter_id)
        if waiter is not None and waiter.shed is None:
            waiter.shed = f"a {waiter.priority} caller waiting for {key!r} was shed for a {newcomer} one"
            logger.warning("autogen_capacity.shed", key=key, shed=waiter.priority, newcomer=newcomer)
            waiter.wake()

    def forget(self, waiter: Place, keys: Iterable[str]) -> None:
        """Take ``waiter`` off the queues of ``keys``."""
        for key in keys:
            queue = self._waiters.get(key)
            if queue is not None and waiter in queue:
                queue.remove(waiter)
                if not queue:
                    del self._waiters[key]
        if not any(waiter in line for line in self._waiters.values()):
            self._places.pop(waiter.waiter_id, None)

    def waiting_on(self, key: str) -> bool:
        """Whether a caller of this process waits for ``key``."""
        return key in self._waiters

    def ready_at(self, key: str, when: float) -> None:
        """Wake the oldest waiter on ``key`` at loop time ``when`` (its refill or cooldown's end), unless its
        timer already fires sooner."""
        timer = self._ready.get(key)
        if timer is not None and timer.when() <= when:
            return
        if timer is not None:
            timer.cancel()
        self._ready[key] = asyncio.get_running_loop().call_at(when, self._on_ready, key)

    def admitted(self, key: str) -> None:
        """An admission on ``key``: when a refill woke it, the refill may admit more, so wake the next waiter."""
        if key in self._chain:
            self.wake_oldest(key)

    def refused(self, key: str) -> None:
        """A refusal on ``key``: the refill is used up."""
        self._chain.discard(key)

    async def aclose(self) -> None:
        """Cancel the timers and the listener, and wake every waiter."""
        self._closing = True
        for timer in self._ready.values():
            timer.cancel()
        self._ready.clear()
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.wake()
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)

    def _on_ready(self, key: str) -> None:
        del self._ready[key]
        self._chain.add(key)
        self.wake_oldest(key)

    def wake_oldest(self, key: str) -> bool:
        """Wake the oldest waiter on ``key`` that is not woken already (``False``: there is none)."""
        return any(waiter.wake(key) for waiter in self._waiters.get(key, ()))

    async def _listen(self) -> None:
        """Wake the oldest waiter for each released key; resubscribe whenever Redis comes back (and then say so:
        the held leases are renewed at once)."""
        delay, failures = 0.05, 0
        while not self._closing:
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                while not self._closing:  # a cancelled get_message may just return None
                    message = await pubsub.get_message(timeout=PUBSUB_IDLE_S)
                    if message is None:
                        continue
                    kind = text(message["type"])
                    if kind == "message":
                        data = text(message["data"])
                        if data.startswith(SHED_PREFIX):
                            waiter_id, newcomer, key = data[len(SHED_PREFIX) :].split(" ", 2)
                            self.shed(waiter_id, key, newcomer)
                        else:
                            self.wake_oldest(data)
                    elif kind == "subscribe":
                        if failures:
                            logger.info("autogen_capacity.ledger_reconnected", url=self._url)
                            self._on_reconnect()
                        delay, failures = 0.05, 0
                        self._listening.set()
                        for waiters in self._waiters.values():  # a release may have been missed meanwhile
                            for waiter in waiters:
                                waiter.wake()
            except Exception as exc:  # a background task: log, back off, resubscribe
                if self._closing:
                    return
                failures += 1
                log = logger.warning if failures == 1 else logger.debug
                log("autogen_capacity.listener_disconnected", url=self._url, error=describe(exc), retry_in=delay)
            finally:
                self._listening.set()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]  # unannotated before redis-py 8.2
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._reconnect_max_s)


def text(value: object) -> str:
    """A Redis reply as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def resolve(future: asyncio.Future[None]) -> None:
    """Wake a waiter unless it is done already."""
    if not future.done():
        future.set_result(None)


def describe(exc: BaseException) -> str:
    """An exception for a log line: redis-py's have a terse repr ("network:ConnectionError"); keep the message."""
    return f"{type(exc).__name__}: {exc}"
