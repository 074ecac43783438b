"""The in-process ledger: exact limits for every team and tool sharing one event loop."""

from __future__ import annotations

import asyncio
import itertools
import weakref
from collections.abc import Mapping
from typing import Any

from .._logging import logger
from ..contracts import AgentCapacity
from ..deadlines import ServiceTimes
from ..exceptions import LedgerClosed, QueueFull
from ..priority import DEFAULT_AGING_S, LineFull, Priority
from ._config_model import LedgerConfig
from ._learning import Answer, moved, overload_rate
from ._limits import bucket_burst, key_status
from ._memory_lines import KeyState, MemoryQueue, Waiter, resolve
from .base import KeyStatus, KeyUsage, Lease, LedgerSnapshot, LiveLimitChange, WaitQueue

__all__ = ["InMemoryLedger", "default_ledger"]


class InMemoryLedger:
    """A :class:`~autogen_capacity.CapacityLedger` for one process (one event loop).

    Admission is atomic because it never awaits between the check and the take. A released slot is
    handed to the oldest waiter of the highest priority class present (FIFO within a class, fair across teams;
    a long wait ages one class up every ``aging_s``): it stays reserved for that waiter's task until the task
    takes it or finishes, so a busy caller cannot snatch it back. One waiter is woken per released slot, never
    all of them. The time each lease was held feeds the key's expected wait (for deadlines).

    Args:
        aging_s: Seconds of waiting that lift a waiter one priority class.

    .. versionadded:: 0.1.0
    """

    __slots__ = ("__weakref__", "_aging_s", "_closed", "_ids", "_kept", "_keys", "_service")

    def __init__(self, *, aging_s: float = DEFAULT_AGING_S) -> None:
        self._keys: dict[str, KeyState] = {}
        self._ids = itertools.count(1)
        self._closed = False
        self._aging_s = aging_s
        self._service = ServiceTimes()
        self._kept: dict[asyncio.Task[Any], list[KeyState]] = {}
        """Slots handed to a task that :meth:`wait_for_change` woke, kept for it until its next lease or its end."""

    def _state(self, key: str) -> KeyState:
        if self._closed:
            raise LedgerClosed("the ledger is closed")
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = KeyState(key, self._aging_s)
        return state

    @property
    def config(self) -> LedgerConfig | None:
        """``{"provider": "memory"}`` for a :func:`default_ledger` (what a loaded team gets back), else
        ``None``: a private ledger object cannot be named in config."""
        return LedgerConfig(provider="memory") if is_default_ledger(self) else None

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    def _status(self, state: KeyState, capacity: AgentCapacity, now: float) -> KeyStatus:
        free: int | None = None
        slots = state.slots(capacity)
        if slots is not None:
            free = slots - state.in_flight - len(state.reserved)
            if state.reserved and asyncio.current_task() in state.reserved:
                free += 1  # the slot handed to this caller
        status = key_status(
            now=now,
            exhausted_until=state.exhausted_until,
            cooldown_until=state.cooldown_until,
            free_slots=free,
            max_concurrent=slots,
            rate_level=state.bucket_level(capacity.rpm, now) if capacity.rpm is not None else 0.0,
            rpm=capacity.rpm,
            tokens_used=state.tokens_in_window(now) if capacity.tpm is not None else 0,
            tpm=capacity.tpm,
            token_entries=state.tokens,
        )
        if state.overload_rate and status.blocked_by is None:  # a key that was just throttled is routed to less
            return KeyStatus(status.headroom * (1.0 - state.overload_rate))
        return status

    async def try_acquire(self, key: str, capacity: AgentCapacity) -> Lease | None:
        """Admit one unit of work on ``key`` now, or return ``None``. Never blocks."""
        held = await self.acquire_or_status(key, capacity)
        return held if isinstance(held, Lease) else None

    async def acquire_or_status(
        self, key: str, capacity: AgentCapacity, *, idle_only: bool = False
    ) -> Lease | KeyStatus:
        """Admit one unit of work on ``key`` now (with ``idle_only``, only when its headroom is 1), or return the
        status that refused it. Never blocks."""
        state = self._state(key)
        now = self._now()
        status = self._status(state, capacity, now)
        if status.blocked_by is not None or (idle_only and status.headroom < 1.0):
            return status  # a refusal is no lease: what is kept for this task stays kept
        if capacity.rpm is not None:
            state.rate_level = state.bucket_level(capacity.rpm, now) + 1
            state.rate_at = now
        if state.reserved:
            state.unreserve(asyncio.current_task())
        if self._kept:
            self._pass_on_kept(state)
        state.in_flight += 1
        state.acquired += 1
        lease = Lease(key, str(next(self._ids)), now, self._release)
        if state.live is not None:
            state.live.on_admitted(state.in_flight, now)
            state.admitted_with[lease.lease_id] = state.in_flight
        return lease

    async def _release(self, lease: Lease) -> None:
        state = self._keys.get(lease.key)
        if state is None:  # the ledger was closed under the lease
            return
        state.in_flight -= 1
        state.admitted_with.pop(lease.lease_id, None)
        self._service.observe(lease.key, max(self._now() - lease.acquired_at, 0.0))
        self._hand_over(state)

    async def observe(self, lease: Lease, *, throttled: bool) -> LiveLimitChange | None:
        """What ``lease``'s call answered (before it is released): an adaptive key's live limit drops on a
        throttled answer (once per burst) and climbs back as the key serves at its limit without one."""
        state = self._keys.get(lease.key)
        live = state.live if state is not None else None
        if state is None or live is None or lease.lease_id not in state.admitted_with:
            return None
        state.overload_rate = overload_rate(state.overload_rate, throttled=throttled)
        before = live.limit
        now = self._now()
        Answer(throttled, state.admitted_with[lease.lease_id], lease.acquired_at, now).teach(live)
        change = moved(lease.key, before, live)
        if change is None:
            return None
        for _ in range(max(change.new - change.old, 0)):  # room for more: wake as many waiters
            if not self._hand_over(state):
                break
        return change

    def _hand_over(self, state: KeyState) -> bool:
        """Wake the oldest live waiter and reserve the freed slot for its task. ``False``: nobody waits, the key
        has no slot to hand over (an adaptive key whose live limit dropped below the leases it holds: a
        reservation it could not honour would leave every waiter refused, and waiting, for good), or it admits
        nobody now (a cooldown, the rpm bucket, the tpm window, an exhausted mark): the key's timer hands the
        slot over when it does, and until then nobody holds it."""
        now = self._now()
        capacity = state.capacity
        if capacity is not None and state.waiters:
            slots = state.slots(capacity)
            if slots is not None and slots - state.in_flight - len(state.reserved) <= 0:
                return False
            status = self._status(state, capacity, now)
            if status.ready_in is not None:  # blocked until then: a waiter woken now would be refused
                self._schedule_ready(state, now + status.ready_in)
                return False
        while state.waiters:
            waiter = state.waiters.pop_next(now)
            assert waiter is not None
            waiter.out_of.append(state)
            if waiter.future.done():
                if waiter.future.result():
                    continue  # woken already
                # Its window ended a moment ago and it has not looked yet: still the one to serve (skipping it
                # handed the slot to a lower class whenever a window's end and a release met).
                waiter.future = asyncio.get_running_loop().create_future()
            waiter.future.set_result(True)
            waiter.woken_by = state.key
            task = waiter.task
            if task is not None and not task.done() and task not in state.reserved:
                state.reserve(task, self._drop_reservation)
            return True
        return False

    def _drop_reservation(self, state: KeyState, task: asyncio.Task[Any]) -> None:
        """A task that was handed a slot finished (or gave up) without taking it: pass it on."""
        if task.done():
            self._kept.pop(task, None)
        if state.unreserve(task):
            self._hand_over(state)

    def _pass_on_kept(self, asked: KeyState) -> None:
        """The current task, woken by :meth:`wait_for_change`, took a lease on ``asked``: the slots kept for it on
        other keys pass on (the one on ``asked``, if any, is what it took)."""
        task = asyncio.current_task()
        if task is None:
            return
        for state in self._kept.pop(task, ()):
            if state is not asked:
                self._drop_reservation(state, task)

    async def status(self, key: str, capacity: AgentCapacity) -> KeyStatus:
        """Whether ``key`` would admit now, its headroom, and why not."""
        return self._status(self._state(key), capacity, self._now())

    async def statuses(self, keys: Mapping[str, AgentCapacity]) -> dict[str, KeyStatus]:
        """:meth:`status` of several keys at once."""
        now, known = self._now(), self._keys
        if self._closed:
            raise LedgerClosed("the ledger is closed")
        return {key: self._status(known.get(key) or self._state(key), capacity, now) for key, capacity in keys.items()}

    async def headroom(self, key: str, capacity: AgentCapacity) -> float:
        """How much more ``key`` can take now, from 0 to 1."""
        return self._status(self._state(key), capacity, self._now()).headroom

    async def wait_for_change(self, waits: Mapping[str, AgentCapacity], timeout: float) -> bool:
        """Wait for a release on one of the keys (oldest waiter first), a refill or a cooldown's end;
        ``True`` at once when one of them admits now. A slot released to this caller stays reserved for its task
        until the task's next lease (on any key: the others pass on) or its end."""
        now = self._now()
        if any(self._status(self._state(key), capacity, now).blocked_by is None for key, capacity in waits.items()):
            return True
        queue = await self.join_queue(waits)
        assert isinstance(queue, MemoryQueue)
        try:
            woken = await queue.wait(timeout)
        except BaseException:
            await queue.leave()  # woken, then cancelled before using the slot: it passes to the next waiter
            raise
        queue.leave_lines()  # a slot handed over stays reserved for this task until its next lease or its end
        kept, task = queue.handed_over(), asyncio.current_task()
        if kept and task is not None:
            self._kept[task] = kept
        return woken

    async def join_queue(self, waits: Mapping[str, AgentCapacity], *, priority: Priority = "default") -> WaitQueue:
        """Take a place in the waiting lines of ``waits``' keys (kept across waits until ``leave()``).

        A refill or a cooldown's end wakes only as many waiters, oldest first, as the key then admits (one
        timer per key, not one per waiter): a hundred teams waiting out a cooldown are not woken at once. On a
        key whose line holds its ``max_queue``, a caller of a higher ``priority`` takes the place of the youngest
        waiter of the lowest class below its own, which is dropped from every line (its wait raises QueueFull).

        Raises:
            QueueFull: no key has room, even after shedding a lower class.
        """
        now = self._now()
        waiter = Waiter(asyncio.get_running_loop().create_future(), asyncio.current_task(), priority, now)
        queued: list[KeyState] = []
        own_wake: float | None = None
        for key, capacity in waits.items():
            state = self._state(key)
            status = self._status(state, capacity, now)
            try:
                victim = state.waiters.shed_for(priority, capacity.max_queue, now)
            except LineFull:
                if status.ready_in is not None:  # not queued on this key: only its own timer can tell
                    own_wake = min(own_wake or now + status.ready_in, now + status.ready_in)
                continue
            if victim is not None:
                self._shed(victim, key, priority)
            queued.append(state)
            state.capacity = capacity
            if status.ready_in is not None:
                self._schedule_ready(state, now + status.ready_in)
        if waits and not queued:
            logger.warning("autogen_capacity.queue_full", keys=list(waits), priority=priority)
            raise QueueFull(f"max_queue callers already wait for {', '.join(map(repr, waits))}")
        for state in queued:
            state.waiters.push(waiter, priority, now)
        return MemoryQueue(queued, waiter, own_wake, self._service, self._drop_reservation)

    def _shed(self, victim: Waiter, key: str, newcomer: Priority) -> None:
        """Drop ``victim`` from every line for a ``newcomer`` of a higher class: its wait raises QueueFull."""
        for state in self._keys.values():
            state.waiters.discard(victim)
        waited = self._now() - victim.since
        victim.shed = (
            f"a {victim.priority} caller waiting for {key!r} was shed for a {newcomer} one "
            f"(max_queue reached; it had waited {waited:.3f}s)"
        )
        logger.warning(
            "autogen_capacity.shed", key=key, shed=victim.priority, newcomer=newcomer, waited_s=round(waited, 3)
        )
        resolve(victim.future, False)

    async def service_time(self, key: str) -> float | None:
        """Seconds a lease on ``key`` is held, on average lately (``None`` before the first release)."""
        return self._service.per_slot(key)

    def _schedule_ready(self, state: KeyState, when: float) -> None:
        timer = state.ready_timer
        if timer is not None and timer.when() <= when:
            return
        if timer is not None:
            timer.cancel()
        state.ready_timer = asyncio.get_running_loop().call_at(when, self._on_ready, state)

    def _on_ready(self, state: KeyState) -> None:
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

    def _room(self, state: KeyState, capacity: AgentCapacity) -> int:
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
            raise LedgerClosed("the ledger is closed")
        now = self._now()
        return {
            key: KeyUsage(
                in_flight=state.in_flight,
                waiting=sum(1 for w in state.waiters if not w.future.done()),
                acquired=state.acquired,
                tokens_last_minute=state.tokens_in_window(now),
                cooling_down_for=max(0.0, state.cooldown_until - now),
                exhausted_for=max(0.0, state.exhausted_until - now),
                live_limit=state.live.limit if state.live is not None else None,
                ceiling=state.live.ceiling if state.live is not None else None,
                limit_steady_for=_steady_for(state, now),
                overload_rate=state.overload_rate,
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
                resolve(waiter.future)
        self._keys.clear()


def _steady_for(state: KeyState, now: float) -> float | None:
    live = state.live
    if live is None:
        return None
    since = live.last_change.at if live.last_change is not None else state.live_since
    return max(now - since, 0.0)


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


def is_default_ledger(ledger: InMemoryLedger) -> bool:
    """Whether ``ledger`` is a :func:`default_ledger` (of some event loop)."""
    return any(found is ledger for found in _default_ledgers.values())
