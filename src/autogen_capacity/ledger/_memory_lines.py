"""What :class:`~autogen_capacity.InMemoryLedger` keeps per key, and a caller's place in the keys' waiting lines.

A line serves the oldest waiter of the highest priority class present (aging lifts a long wait one class at a
time, see :mod:`autogen_capacity.priority`). A caller keeps its place from one wait to the next; a wake-up
takes it out of a line as that line's head, and it goes back to the head if it waits on.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import Callable
from typing import Any

from ..adaptive import LiveLimit
from ..contracts import AgentCapacity
from ..deadlines import ServiceTimes, expected_wait
from ..exceptions import QueueFull
from ..priority import Priority, WaitLine
from ._limits import TOKEN_WINDOW_S, leaked

__all__ = ["KeyState", "MemoryQueue", "Waiter", "resolve"]


class Waiter:
    """One caller waiting in the lines of one or more keys."""

    __slots__ = ("future", "out_of", "priority", "shed", "since", "task", "woken_by")

    def __init__(
        self, future: asyncio.Future[bool], task: asyncio.Task[Any] | None, priority: Priority, since: float
    ) -> None:
        self.future = future
        """Resolved with ``True`` by a wake-up (a release handed over, a refill, a cooldown's end)."""
        self.task = task
        self.priority: Priority = priority
        self.since = since
        """When it joined: its place in its class, and how long it has aged."""
        self.out_of: list[KeyState] = []
        """Lines a wake-up took this waiter out of (as their head): it goes back to their head if it waits on."""
        self.woken_by: str | None = None
        """The key whose wake-up resolved ``future`` (a slot handed over there, or its refill)."""
        self.shed: str | None = None
        """Why it was dropped from every line for a caller of a higher class (then its wait raises)."""


class KeyState:
    """One key's usage: leases, the rpm bucket, the tpm window, cooldowns, and its waiting line."""

    __slots__ = (
        "acquired",
        "admitted_with",
        "capacity",
        "cooldown_until",
        "exhausted_until",
        "in_flight",
        "key",
        "live",
        "live_since",
        "overload_rate",
        "rate_at",
        "rate_level",
        "ready_timer",
        "reserved",
        "token_sum",
        "tokens",
        "waiters",
    )

    def __init__(self, key: str, aging_s: float) -> None:
        self.key = key
        self.in_flight = 0
        self.acquired = 0
        self.rate_level = 0.0
        """The rpm bucket's level (requests) when it last changed, at ``rate_at``."""
        self.rate_at = 0.0
        self.tokens: deque[tuple[float, int]] = deque()
        self.token_sum = 0
        self.cooldown_until = 0.0
        self.exhausted_until = 0.0
        self.waiters: WaitLine[Waiter] = WaitLine(aging_s)
        self.reserved: dict[asyncio.Task[Any], Callable[[asyncio.Task[Any]], object]] = {}
        """Tasks a released slot was handed to: the slot is theirs until they take it, leave or finish (with the
        done-callback that passes it on if they finish first)."""
        self.capacity: AgentCapacity | None = None
        """The contract the key's waiters wait by, to know how many a refill or a cooldown's end admits."""
        self.ready_timer: asyncio.TimerHandle | None = None
        """One timer per key for its refill or cooldown's end, which wakes as many waiters as it admits."""
        self.live: LiveLimit | None = None
        """An adaptive key's live concurrency limit (under its contract's ``max_concurrent``)."""
        self.live_since = 0.0
        """When the adaptive key was first used (its live limit's age before it ever moved)."""
        self.overload_rate = 0.0
        """The adaptive key's exponentially weighted share of throttled answers."""
        self.admitted_with: dict[str, int] = {}
        """Leases held on an adaptive key, and the leases in flight when each was admitted (itself included)."""

    def reserve(self, task: asyncio.Task[Any], on_done: Callable[[KeyState, asyncio.Task[Any]], object]) -> None:
        """Hold a released slot for ``task``; ``on_done(self, task)`` runs if the task finishes before it takes it."""
        callback = functools.partial(on_done, self)
        self.reserved[task] = callback
        task.add_done_callback(callback)

    def unreserve(self, task: asyncio.Task[Any] | None) -> bool:
        """Drop ``task``'s hold on a slot (it took the slot, or leaves it): whether it had one."""
        callback = self.reserved.pop(task, None) if task is not None else None
        if task is None or callback is None:
            return False
        task.remove_done_callback(callback)  # a task that lives on keeps nothing per slot it was handed
        return True

    def slots(self, capacity: AgentCapacity) -> int | None:
        """The key's concurrency limit now: the live one for an adaptive contract, else ``max_concurrent``."""
        ceiling = capacity.max_concurrent
        if ceiling is None or not capacity.adaptive:
            return ceiling
        live = self.live
        if live is None:
            live = self.live = LiveLimit(ceiling, capacity.initial_concurrent)
            self.live_since = asyncio.get_running_loop().time()
        elif live.ceiling != ceiling:
            live.set_ceiling(ceiling, asyncio.get_running_loop().time())
        return live.limit

    def bucket_level(self, rpm: float, now: float) -> float:
        """The rpm bucket's level now."""
        return leaked(self.rate_level, self.rate_at, now, rpm)

    def tokens_in_window(self, now: float) -> int:
        while self.tokens and self.tokens[0][0] <= now - TOKEN_WINDOW_S:
            self.token_sum -= self.tokens.popleft()[1]
        return self.token_sum


class MemoryQueue:
    """One caller's place in the waiting lines of several keys."""

    __slots__ = ("_drop_reservation", "_own_wake", "_service", "_states", "_waiter")

    def __init__(
        self,
        states: list[KeyState],
        waiter: Waiter,
        own_wake: float | None,
        service: ServiceTimes,
        drop_reservation: Callable[[KeyState, asyncio.Task[Any]], None],
    ) -> None:
        self._states = states
        self._waiter = waiter
        self._own_wake = own_wake
        """When a key this caller could not queue on (``max_queue``) admits again by itself, if known."""
        self._service = service
        self._drop_reservation = drop_reservation

    async def wait(self, timeout: float) -> bool:
        """Wait for a wake-up (one that came since the last wait counts at once) or ``timeout``.

        Raises:
            QueueFull: the caller was dropped from every line for a caller of a higher class.
        """
        waiter = self._waiter
        loop = asyncio.get_running_loop()
        now = loop.time()
        for state in waiter.out_of:  # back at the head of the lines it was the head of: its place is kept
            if waiter not in state.waiters:
                state.waiters.push_front(waiter, waiter.priority, waiter.since)
        waiter.out_of.clear()
        if not waiter.future.done():
            waiter.woken_by = None  # the wake-up before the last wait was used by the attempt since
            until = now + max(timeout, 0.0)
            if self._own_wake is not None and self._own_wake < until:
                until = self._own_wake
            timer = loop.call_at(until, resolve, waiter.future, False)
            try:
                await waiter.future
            finally:
                timer.cancel()
        if waiter.shed is not None:
            raise QueueFull(waiter.shed)
        woken = waiter.future.result() or (self._own_wake is not None and loop.time() >= self._own_wake)
        if self._own_wake is not None and loop.time() >= self._own_wake:
            self._own_wake = None
        waiter.future = loop.create_future()
        return woken

    @property
    def woken_by(self) -> str | None:
        """The key whose wake-up ended the last wait (``None``: a timeout, or woken by none)."""
        return self._waiter.woken_by

    def expected_wait(self) -> float | None:
        """Seconds until this caller is likely served: its place in each line times the key's observed time a
        slot is held, per slot (the shortest over its keys); ``None`` when no key has observed one yet."""
        now = asyncio.get_running_loop().time()
        found: list[float] = []
        for state in self._states:
            per_slot = self._service.per_slot(state.key)
            slots = state.capacity.max_concurrent if state.capacity is not None else None
            if per_slot is None or slots is None:
                continue
            line = state.waiters
            position = line.position(self._waiter, now) if self._waiter in line else 0
            found.append(expected_wait(position, slots, per_slot))
        return min(found) if found else None

    def handed_over(self) -> list[KeyState]:
        """The keys whose released slot is reserved for this caller's task."""
        task = self._waiter.task
        return [state for state in self._states if task is not None and task in state.reserved]

    def leave_lines(self) -> None:
        """Leave every line, keeping what was handed over (reserved for this task until it takes it or ends)."""
        waiter = self._waiter
        resolve(waiter.future, False)
        for state in self._states:
            state.waiters.discard(waiter)
        waiter.out_of.clear()

    async def leave(self) -> None:
        """Leave every line; a released slot handed to this caller's task and not taken passes on."""
        self.leave_lines()
        task = self._waiter.task
        if task is not None:
            for state in self._states:
                self._drop_reservation(state, task)


def resolve(future: asyncio.Future[bool], woken: bool = True) -> None:
    if not future.done():
        future.set_result(woken)
