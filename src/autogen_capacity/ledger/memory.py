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

from .._logging import logger
from ..contracts import AgentCapacity
from ..exceptions import LedgerClosedError, QueueFull
from ._limits import TOKEN_WINDOW_S, bucket_burst, key_status, leaked
from .base import KeyStatus, KeyUsage, Lease, LedgerSnapshot, WaitQueue

if TYPE_CHECKING:
    from .config import LedgerConfig

__all__ = ["InMemoryLedger", "default_ledger"]


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
        "rate_at",
        "rate_level",
        "ready_timer",
        "reserved",
        "token_sum",
        "tokens",
        "waiters",
    )

    def __init__(self) -> None:
        self.in_flight = 0
        self.acquired = 0
        self.rate_level = 0.0
        """The rpm bucket's level (requests) when it last changed, at ``rate_at``."""
        self.rate_at = 0.0
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

    def bucket_level(self, rpm: float, now: float) -> float:
        """The rpm bucket's level now."""
        return leaked(self.rate_level, self.rate_at, now, rpm)

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
        free: int | None = None
        if capacity.max_concurrent is not None:
            free = capacity.max_concurrent - state.in_flight - len(state.reserved)
            if state.reserved and asyncio.current_task() in state.reserved:
                free += 1  # the slot handed to this caller
        return key_status(
            now=now,
            exhausted_until=state.exhausted_until,
            cooldown_until=state.cooldown_until,
            free_slots=free,
            max_concurrent=capacity.max_concurrent,
            rate_level=state.bucket_level(capacity.rpm, now) if capacity.rpm is not None else 0.0,
            rpm=capacity.rpm,
            tokens_used=state.tokens_in_window(now) if capacity.tpm is not None else 0,
            tpm=capacity.tpm,
            token_entries=state.tokens,
        )

    async def try_acquire(self, key: str, capacity: AgentCapacity) -> Lease | None:
        """Admit one unit of work on ``key`` now, or return ``None``. Never blocks."""
        state = self._state(key)
        now = self._now()
        if self._status(state, capacity, now).blocked_by is not None:
            return None
        if capacity.rpm is not None:
            state.rate_level = state.bucket_level(capacity.rpm, now) + 1
            state.rate_at = now
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
            room = min(room, int(bucket_burst(capacity.rpm) - state.bucket_level(capacity.rpm, self._now())))
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
