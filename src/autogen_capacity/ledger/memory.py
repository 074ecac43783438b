"""The in-process ledger: exact limits for every team and tool sharing one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import weakref
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiolimiter import AsyncLimiter

from .._logging import logger
from ..contracts import AgentCapacity
from ..exceptions import LedgerClosedError, QueueFull
from .base import KeyStatus, KeyUsage, Lease, LedgerSnapshot, WaitQueue

if TYPE_CHECKING:
    from .config import LedgerConfig

__all__ = ["InMemoryLedger", "default_ledger"]

TOKEN_WINDOW_S = 60.0
_RATE_SLACK = 1e-6
"""Bucket level (in requests) forgiven as float rounding: a bucket that leaked for exactly its ``ready_in``
must admit, not report itself 1e-14 requests short (a fake or frozen clock would spin on that forever)."""


class _Waiter:
    __slots__ = ("future", "out_of", "task")

    def __init__(self, future: asyncio.Future[bool], task: asyncio.Task[Any] | None) -> None:
        self.future = future
        """Resolved with ``True`` by a wake-up (a release handed over, a refill, a cooldown's end)."""
        self.task = task
        self.out_of: list[_KeyState] = []
        """Lines a wake-up took this waiter out of (as their oldest): it goes back to their head if it waits on."""


class _MemoryQueue:
    """One caller's place in the waiting lines of several keys of an :class:`InMemoryLedger`."""

    __slots__ = ("_ledger", "_own_wake", "_states", "_waiter")

    def __init__(
        self, ledger: InMemoryLedger, states: list[_KeyState], waiter: _Waiter, own_wake: float | None
    ) -> None:
        self._ledger = ledger
        self._states = states
        self._waiter = waiter
        self._own_wake = own_wake
        """When a key this caller could not queue on (``max_queue``) admits again by itself, if known."""

    async def wait(self, timeout: float) -> bool:
        """Wait for a wake-up (one that came since the last wait counts at once) or ``timeout``."""
        waiter = self._waiter
        loop = asyncio.get_running_loop()
        now = loop.time()
        for state in waiter.out_of:  # back at the head of the lines it was the oldest in: its place is kept
            state.waiters.appendleft(waiter)
        waiter.out_of.clear()
        if not waiter.future.done():
            until = now + max(timeout, 0.0)
            if self._own_wake is not None and self._own_wake < until:
                until = self._own_wake
            timer = loop.call_at(until, _resolve, waiter.future, False)
            try:
                await waiter.future
            finally:
                timer.cancel()
        woken = waiter.future.result() or (self._own_wake is not None and loop.time() >= self._own_wake)
        if self._own_wake is not None and loop.time() >= self._own_wake:
            self._own_wake = None
        self._rearm()
        return woken

    def leave_lines(self) -> None:
        """Leave every line, keeping what was handed over (reserved for this task until it takes it or ends)."""
        waiter = self._waiter
        _resolve(waiter.future, False)
        for state in self._states:
            if state not in waiter.out_of:
                with contextlib.suppress(ValueError):
                    state.waiters.remove(waiter)
        waiter.out_of.clear()

    def _rearm(self) -> None:
        """A fresh future for the next wake-up."""
        self._waiter.future = asyncio.get_running_loop().create_future()

    async def leave(self) -> None:
        """Leave every line; a released slot handed to this caller's task and not taken passes on."""
        self.leave_lines()
        task = self._waiter.task
        if task is not None:
            for state in self._states:
                self._ledger._drop_reservation(state, task)


class _KeyState:
    __slots__ = (
        "acquired",
        "capacity",
        "cooldown_until",
        "exhausted_until",
        "in_flight",
        "limiter",
        "ready_timer",
        "reserved",
        "token_sum",
        "tokens",
        "waiters",
    )

    def __init__(self) -> None:
        self.in_flight = 0
        self.acquired = 0
        self.limiter: AsyncLimiter | None = None
        self.tokens: deque[tuple[float, int]] = deque()
        self.token_sum = 0
        self.cooldown_until = 0.0
        self.exhausted_until = 0.0
        self.waiters: deque[_Waiter] = deque()
        self.reserved: set[asyncio.Task[Any]] = set()
        """Tasks a released slot was handed to: the slot is theirs until they take it or finish."""
        self.capacity: AgentCapacity | None = None
        """The contract the key's waiters wait by, to know how many a refill or a cooldown's end admits."""
        self.ready_timer: asyncio.TimerHandle | None = None
        """One timer per key for its refill or cooldown's end, which wakes as many waiters as it admits."""

    def limiter_for(self, rpm: float) -> AsyncLimiter:
        """The rpm bucket: up to ``max(rpm, 1)`` at once, leaking ``rpm / 60`` a second."""
        burst = max(rpm, 1.0)
        period = 60.0 * burst / rpm
        limiter = self.limiter
        if limiter is None or limiter.max_rate != burst or limiter.time_period != period:
            limiter = self.limiter = AsyncLimiter(burst, period)
        return limiter

    @staticmethod
    def bucket_level(limiter: AsyncLimiter) -> float:
        """Leak the rpm bucket up to now and return its level, forgiving float rounding at the boundary."""
        limiter.has_capacity()  # leaks the bucket
        # aiolimiter has no public accessor for the bucket level.
        level: float = limiter._level
        room = limiter.max_rate - 1.0
        if room < level <= room + _RATE_SLACK:
            level = limiter._level = room
        return level

    def tokens_in_window(self, now: float) -> int:
        while self.tokens and self.tokens[0][0] <= now - TOKEN_WINDOW_S:
            self.token_sum -= self.tokens.popleft()[1]
        return self.token_sum


class InMemoryLedger:
    """A :class:`~autogen_capacity.CapacityLedger` for one process (one event loop).

    Admission is atomic because it never awaits between the check and the take. A released slot is
    handed to the oldest waiter (FIFO, fair across teams): it stays reserved for that waiter's task until
    the task takes it or finishes, so a busy caller cannot snatch it back. One waiter is woken per released
    slot, never all of them.

    .. versionadded:: 0.1.0
    """

    __slots__ = ("__weakref__", "_closed", "_ids", "_keys")

    def __init__(self) -> None:
        self._keys: dict[str, _KeyState] = {}
        self._ids = itertools.count(1)
        self._closed = False

    def _state(self, key: str) -> _KeyState:
        if self._closed:
            raise LedgerClosedError("the ledger is closed")
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = _KeyState()
        return state

    @property
    def config(self) -> LedgerConfig | None:
        """``{"provider": "memory"}`` for a :func:`default_ledger` (what a loaded team gets back), else
        ``None``: a private ledger object cannot be named in config."""
        from .config import LedgerConfig

        is_default = any(ledger is self for ledger in _default_ledgers.values())
        return LedgerConfig(provider="memory") if is_default else None

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    def _status(self, state: _KeyState, capacity: AgentCapacity, now: float) -> KeyStatus:
        if state.exhausted_until > now:
            return KeyStatus(0.0, "exhausted", state.exhausted_until - now)
        if state.cooldown_until > now:
            return KeyStatus(0.0, "cooldown", state.cooldown_until - now)
        headroom = 1.0
        if capacity.max_concurrent is not None:
            free = capacity.max_concurrent - state.in_flight - len(state.reserved)
            if state.reserved and asyncio.current_task() in state.reserved:
                free += 1  # the slot handed to this caller
            if free <= 0:
                return KeyStatus(0.0, "slots")
            headroom = free / capacity.max_concurrent
        if capacity.rpm is not None:
            limiter = state.limiter_for(capacity.rpm)
            level = state.bucket_level(limiter)
            if level + 1 > limiter.max_rate:
                per_second = limiter.max_rate / limiter.time_period
                return KeyStatus(0.0, "rate", (level + 1 - limiter.max_rate) / per_second)
            headroom = min(headroom, 1 - level / limiter.max_rate)
        if capacity.tpm is not None:
            used = state.tokens_in_window(now)
            if used >= capacity.tpm:
                return KeyStatus(0.0, "tpm", self._tpm_ready_in(state, capacity.tpm, now))
            headroom = min(headroom, 1 - used / capacity.tpm)
        return KeyStatus(headroom)

    @staticmethod
    def _tpm_ready_in(state: _KeyState, tpm: int, now: float) -> float:
        remaining = state.token_sum
        for stamp, tokens in state.tokens:
            remaining -= tokens
            if remaining < tpm:
                return stamp + TOKEN_WINDOW_S - now
        return 0.0

    async def try_acquire(self, key: str, capacity: AgentCapacity) -> Lease | None:
        """Admit one unit of work on ``key`` now, or return ``None``. Never blocks."""
        state = self._state(key)
        now = self._now()
        if self._status(state, capacity, now).blocked_by is not None:
            return None
        if capacity.rpm is not None:
            await state.limiter_for(capacity.rpm).acquire()  # has capacity: returns without suspending
        if state.reserved:
            state.reserved.discard(asyncio.current_task())
        state.in_flight += 1
        state.acquired += 1
        return Lease(key, str(next(self._ids)), now, self._release)

    async def _release(self, lease: Lease) -> None:
        state = self._keys.get(lease.key)
        if state is None:  # the ledger was closed under the lease
            return
        state.in_flight -= 1
        self._hand_over(state)

    def _hand_over(self, state: _KeyState) -> bool:
        """Wake the oldest live waiter and reserve the freed slot for its task. ``False``: nobody waits."""
        while state.waiters:
            waiter = state.waiters.popleft()
            waiter.out_of.append(state)
            if waiter.future.done():
                continue
            waiter.future.set_result(True)
            task = waiter.task
            if task is not None and not task.done() and task not in state.reserved:
                state.reserved.add(task)
                task.add_done_callback(functools.partial(self._drop_reservation, state))
            return True
        return False

    def _drop_reservation(self, state: _KeyState, task: asyncio.Task[Any]) -> None:
        """A task that was handed a slot finished (or gave up) without taking it: pass it on."""
        if task in state.reserved:
            state.reserved.discard(task)
            self._hand_over(state)

    async def status(self, key: str, capacity: AgentCapacity) -> KeyStatus:
        """Whether ``key`` would admit now, its headroom, and why not."""
        return self._status(self._state(key), capacity, self._now())

    async def statuses(self, keys: Mapping[str, AgentCapacity]) -> dict[str, KeyStatus]:
        """:meth:`status` of several keys at once."""
        now = self._now()
        return {key: self._status(self._state(key), capacity, now) for key, capacity in keys.items()}

    async def headroom(self, key: str, capacity: AgentCapacity) -> float:
        """How much more ``key`` can take now, from 0 to 1."""
        return self._status(self._state(key), capacity, self._now()).headroom

    async def wait_for_change(self, waits: Mapping[str, AgentCapacity], timeout: float) -> bool:
        """Wait for a release on one of the keys (oldest waiter first), a refill or a cooldown's end;
        ``True`` at once when one of them admits now."""
        now = self._now()
        if any(self._status(self._state(key), capacity, now).blocked_by is None for key, capacity in waits.items()):
            return True
        queue = await self.join_queue(waits)
        assert isinstance(queue, _MemoryQueue)
        try:
            woken = await queue.wait(timeout)
        except BaseException:
            await queue.leave()  # woken, then cancelled before using the slot: it passes to the next waiter
            raise
        queue.leave_lines()  # a slot handed over stays reserved for this task until it takes it or finishes
        return woken

    async def join_queue(self, waits: Mapping[str, AgentCapacity]) -> WaitQueue:
        """Take a place in the waiting lines of ``waits``' keys (kept across waits until ``leave()``).

        A refill or a cooldown's end wakes only as many waiters, oldest first, as the key then admits (one
        timer per key, not one per waiter): a hundred teams waiting out a cooldown are not woken at once.

        Raises:
            QueueFull: every key already has its ``max_queue`` callers waiting.
        """
        now = self._now()
        queued: list[_KeyState] = []
        own_wake: float | None = None
        for key, capacity in waits.items():
            state = self._state(key)
            status = self._status(state, capacity, now)
            if capacity.max_queue is None or len(state.waiters) < capacity.max_queue:
                queued.append(state)
                state.capacity = capacity
                if status.ready_in is not None:
                    self._schedule_ready(state, now + status.ready_in)
            elif status.ready_in is not None:  # not queued on this key: only its own timer can tell
                own_wake = min(own_wake, now + status.ready_in) if own_wake is not None else now + status.ready_in
        if waits and not queued:
            logger.warning("autogen_capacity.queue_full", keys=list(waits))
            raise QueueFull(f"max_queue callers already wait for {', '.join(map(repr, waits))}")
        waiter = _Waiter(asyncio.get_running_loop().create_future(), asyncio.current_task())
        for state in queued:
            state.waiters.append(waiter)
        return _MemoryQueue(self, queued, waiter, own_wake)

    def _schedule_ready(self, state: _KeyState, when: float) -> None:
        timer = state.ready_timer
        if timer is not None and timer.when() <= when:
            return
        if timer is not None:
            timer.cancel()
        state.ready_timer = asyncio.get_running_loop().call_at(when, self._on_ready, state)

    def _on_ready(self, state: _KeyState) -> None:
        """The key's refill or cooldown's end: wake as many waiters as it now admits, oldest first."""
        state.ready_timer = None
        capacity = state.capacity
        if capacity is None or self._closed:
            return
        now = self._now()
        status = self._status(state, capacity, now)
        if status.blocked_by is not None:
            if status.ready_in is not None:  # extended meanwhile (a new cooldown, a bigger tpm debit)
                self._schedule_ready(state, now + status.ready_in)
            return  # only a release can help now, and a release hands its slot over itself
        for _ in range(self._room(state, capacity)):
            if not self._hand_over(state):
                break

    def _room(self, state: _KeyState, capacity: AgentCapacity) -> int:
        """How many more callers the key admits now (every waiter when nothing bounds it)."""
        room = len(state.waiters)
        if capacity.max_concurrent is not None:
            room = min(room, capacity.max_concurrent - state.in_flight - len(state.reserved))
        if capacity.rpm is not None:
            limiter = state.limiter_for(capacity.rpm)
            room = min(room, int(limiter.max_rate - state.bucket_level(limiter)))
        return max(room, 1)

    async def record_tokens(self, key: str, tokens: int) -> None:
        """Debit ``tokens`` from the key's tpm window."""
        if tokens <= 0:
            return
        state = self._state(key)
        state.tokens.append((self._now(), tokens))
        state.token_sum += tokens

    async def cooldown(self, key: str, seconds: float) -> None:
        """Take ``key`` out of admission for ``seconds`` (extends, never shortens, a cooldown)."""
        state = self._state(key)
        state.cooldown_until = max(state.cooldown_until, self._now() + seconds)

    async def mark_exhausted(self, key: str, seconds: float) -> None:
        """Refuse ``key`` to everyone sharing this ledger for ``seconds``."""
        state = self._state(key)
        state.exhausted_until = max(state.exhausted_until, self._now() + seconds)

    async def snapshot(self) -> LedgerSnapshot:
        """Usage per key."""
        if self._closed:
            raise LedgerClosedError("the ledger is closed")
        now = self._now()
        return {
            key: KeyUsage(
                in_flight=state.in_flight,
                waiting=sum(1 for w in state.waiters if not w.future.done()),
                acquired=state.acquired,
                tokens_last_minute=state.tokens_in_window(now),
                cooling_down_for=max(0.0, state.cooldown_until - now),
                exhausted_for=max(0.0, state.exhausted_until - now),
            )
            for key, state in self._keys.items()
        }

    async def aclose(self) -> None:
        """Wake every waiter and refuse further work. Leases still held release as no-ops."""
        self._closed = True
        for state in self._keys.values():
            if state.ready_timer is not None:
                state.ready_timer.cancel()
            for waiter in state.waiters:
                _resolve(waiter.future)
        self._keys.clear()


def _resolve(future: asyncio.Future[bool], woken: bool = True) -> None:
    if not future.done():
        future.set_result(woken)


_default_ledgers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, InMemoryLedger] = weakref.WeakKeyDictionary()


def default_ledger() -> InMemoryLedger:
    """The process-wide ledger teams use when given none (one per running event loop), so separate team
    instances with the same member names share their limits.

    Raises:
        RuntimeError: no event loop is running.
    """
    loop = asyncio.get_running_loop()
    ledger = _default_ledgers.get(loop)
    if ledger is None or ledger._closed:
        ledger = _default_ledgers[loop] = InMemoryLedger()
    return ledger
