"""The admission engine: one attempt loop and one overload policy for the team's manager, :func:`acquire` /
:func:`lease` and the capacity-aware tools.

One admission leases the first candidate, in preference order, whose key admits now. When nobody can be
admitted it waits in the candidates' waiting lines (its FIFO place kept from one wait to the next) for a
release, a refill or a cooldown's end, within a window:

* while a usable candidate cools down after an overload, the window lasts until the soonest cooldown ends
  (the provider's word extends a wait, never shortens it) and costs no retry; a cooldown longer than the
  contract's ``max_retry_after_ms`` is not waited out: the admission ends at once, carrying ``retry_after``;
* otherwise window *k* lasts the schedule's *k*-th (jittered) delay, and a window that ends with the
  candidates still refused spends retry *k*; past ``max_caller_retries`` the admission ends exhausted;
* a wake-up that loses the race to another caller costs nothing: the window goes on;
* in all, an admission never waits longer than its schedule plus ``max_retry_after_ms``.

Every pass that admits nobody awaits a real wake source (a wake-up, the window's end, the termination poll).
What a turn taught is written before its slot is handed on: :func:`record_overload` and
:func:`settle` record a cooldown, an exhausted mark or the tokens used, then release.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Literal, Protocol

from . import telemetry
from ._logging import logger
from .contracts import AgentCapacity
from .deadlines import should_fail_fast
from .exceptions import CapacityExhausted, QueueFull
from .ledger import CapacityLedger, KeyStatus, Lease, default_ledger
from .ledger.base import PollingQueue, WaitQueue
from .overload import Overload
from .priority import Priority
from .testing import _backoff_cap, _record_pass

__all__ = [
    "Admission",
    "Admitted",
    "Candidate",
    "WaitReport",
    "acquire",
    "admit_one",
    "lease",
    "record_overload",
    "settle",
]

IDLE = KeyStatus(1.0)
ROUTED_AROUND = KeyStatus(0.0, "exhausted")
_rng = random.Random()


@dataclass(frozen=True, slots=True)
class Candidate:
    """One provider that may take the work: what is checked, leased and waited for."""

    name: str
    key: str
    contract: AgentCapacity
    """The key's limits and the backoff schedule a caller follows while waiting for it."""
    leased: bool = True
    """Whether admission takes a lease on ``key`` (``False``: nothing is limited, only cooldowns are seen)."""
    checked: bool = True
    """Whether the ledger is asked at all (``False``: a provider with no contract and no cooldown: idle)."""
    probe: Callable[[], Awaitable[KeyStatus]] | None = None
    """A nested team's own status (its key's, with its members' headroom): replaces the ledger's status."""


@dataclass(frozen=True, slots=True)
class Admitted:
    candidate: Candidate
    lease: Lease | None


@dataclass(frozen=True, slots=True)
class WaitReport:
    """Why and how long an admission waits: for events and logs."""

    statuses: Mapping[str, KeyStatus]
    window: Literal["backoff", "cooldown"]
    retry: int
    max_retries: int
    delay: float


Order = Callable[[list[Candidate], Mapping[str, KeyStatus]], Awaitable[list[Candidate]]]
"""Candidates with headroom in preference order (routing, a selector's pick)."""


class Observer(Protocol):
    """What the caller of an admission is told: the deferrals next to the admitted candidate, each wait."""

    async def deferred(self, statuses: Mapping[str, KeyStatus], admitted: str | None) -> None: ...

    async def waiting(self, report: WaitReport) -> None: ...


class Admission:
    """The attempt loop of one caller (a team's manager, a tool, :func:`acquire`).

    Args:
        ledger: Where usage is read and leases are taken.
        observer: Told about deferrals and waits.
        spend_retry: A team-wide retry budget: called once per spent retry after the first, ``False`` ends
            the admission exhausted.
        should_stop: Re-checked at least every ``poll_s`` while waiting (a termination condition); ``True``
            ends the admission with ``None``.
        team: The name of the team that admits (for telemetry), if any.
        priority: The caller's class in the keys' waiting lines (``critical``, ``default``, ``sheddable``).
    """

    __slots__ = ("_ledger", "_observer", "_poll_s", "_priority", "_should_stop", "_spend_retry", "_team")

    def __init__(
        self,
        ledger: CapacityLedger,
        *,
        observer: Observer | None = None,
        spend_retry: Callable[[], bool] | None = None,
        should_stop: Callable[[], Awaitable[bool]] | None = None,
        poll_s: float | None = None,
        team: str | None = None,
        priority: Priority = "default",
    ) -> None:
        self._ledger = ledger
        self._priority: Priority = priority
        self._team = team
        self._observer = observer
        self._spend_retry = spend_retry
        self._should_stop = should_stop
        self._poll_s = poll_s

    async def status(self, candidate: Candidate) -> KeyStatus:
        """Whether ``candidate`` can be admitted now: the one definition the loop, waits and reports share."""
        if candidate.probe is not None:
            return await candidate.probe()
        if not candidate.checked:
            return IDLE
        return await self._ledger.status(candidate.key, candidate.contract)

    async def _statuses(self, candidates: Sequence[Candidate], routed_around: frozenset[str]) -> dict[str, KeyStatus]:
        """Every candidate's :meth:`status`, the ledger's read in one call (a key shared under two different
        contracts is read once per contract)."""
        asked: dict[str, AgentCapacity] = {}
        for c in candidates:
            if c.checked and c.probe is None and c.name not in routed_around:
                asked.setdefault(c.key, c.contract)
        found = await self._ledger.statuses(asked) if asked else {}
        statuses: dict[str, KeyStatus] = {}
        for c in candidates:
            if c.name in routed_around:
                statuses[c.name] = ROUTED_AROUND
            elif c.probe is not None:
                statuses[c.name] = await c.probe()
            elif not c.checked:
                statuses[c.name] = IDLE
            elif asked[c.key] == c.contract:
                statuses[c.name] = found[c.key]
            else:
                statuses[c.name] = await self._ledger.status(c.key, c.contract)
        return statuses

    async def admit(
        self,
        candidates: Sequence[Candidate],
        *,
        order: Order | None = None,
        routed_around: frozenset[str] = frozenset(),
        deadline: float | None = None,
    ) -> Admitted | None:
        """Admit the first candidate in ``order`` whose key admits, waiting by contract while none does.

        With a ``deadline`` (loop time), it never waits past it, never starts a turn the time left cannot
        cover (the key's observed time per lease), and ends at once when its expected wait in line already
        exceeds the time left (fail fast, with the expected wait as ``retry_after``).

        Returns the admitted candidate and its lease, or ``None`` when ``should_stop`` said so while waiting.

        Raises:
            CapacityExhausted: nobody could be admitted within the contract or the deadline (``QueueFull``:
                every line is full, or this caller was shed for a higher class).
        """
        loop = asyncio.get_running_loop()
        started = window_end = bound = loop.time()
        if deadline is not None and started >= deadline:
            raise CapacityExhausted("Capacity exhausted: the run's deadline has passed")
        retries = passes = 0
        queue: WaitQueue | None = None
        wait: telemetry.WaitSpan | None = None  # only when it waits
        try:
            while True:
                passes += 1
                statuses = await self._statuses(candidates, routed_around)
                admitted = await self._try(candidates, statuses, order)
                if admitted is not None:
                    if deadline is not None:
                        await self._turn_fits(admitted, deadline - loop.time(), candidates, statuses)
                    telemetry.admitted(admitted.candidate, statuses, candidates, started, self._team, wait)
                    if self._observer is not None:
                        await self._observer.deferred(statuses, admitted.candidate.name)
                    return admitted
                usable = [c for c in candidates if statuses[c.name].blocked_by != "exhausted"]
                if not usable:
                    raise _exhausted("every candidate is exhausted or out of retries", candidates, statuses)
                schedule = usable[0].contract
                now = loop.time()
                if now >= window_end:
                    if retries == 0 and window_end == bound:  # the first refusal: the whole wait's bound
                        bound = now + _cap(schedule.backoff_total()) + schedule.max_retry_after_ms / 1000
                        if deadline is not None:
                            bound = min(bound, deadline)
                    if queue is None:
                        queue = await self._join(usable)
                    _fail_fast(queue.expected_wait(), bound - now, deadline, candidates, statuses)
                    window, delay = self._next_window(candidates, usable, statuses, retries)
                    if window == "backoff":
                        retries += 1
                    if now + delay > bound:
                        delay = bound - now
                        if delay <= 0:
                            why = (
                                "the run's deadline passed while waiting"
                                if bound == deadline
                                else "waited as long as the contract allows"
                            )
                            raise _exhausted(why, candidates, statuses)
                    window_end = now + delay
                    wait = telemetry.waiting(wait, statuses, candidates, window, retries, delay, self._team)
                    if self._observer is not None:
                        await self._observer.deferred(statuses, None)
                        await self._observer.waiting(
                            WaitReport(statuses, window, retries, schedule.max_caller_retries, delay)
                        )
                if queue is None:
                    queue = await self._join(usable)
                timeout = window_end - now
                if self._should_stop is not None and self._poll_s is not None:
                    timeout = min(timeout, self._poll_s)
                await queue.wait(timeout)
                if self._should_stop is not None and await self._should_stop():
                    telemetry.stopped(wait)
                    return None
        except BaseException as error:  # exhausted, cancelled, the ledger failed
            telemetry.failed(wait, error)
            raise
        finally:
            _record_pass(passes)
            if queue is not None:
                await queue.leave()

    async def _join(self, usable: Sequence[Candidate]) -> WaitQueue:
        """A place in the lines of every usable candidate's key, kept for the whole admission."""
        waits = {c.key: c.contract for c in usable if c.checked}
        join = getattr(self._ledger, "join_queue", None)
        if join is None:
            return PollingQueue(self._ledger, waits)
        queue: WaitQueue = await join(waits, priority=self._priority)
        return queue

    async def _turn_fits(
        self, admitted: Admitted, remaining: float, candidates: Sequence[Candidate], statuses: Mapping[str, KeyStatus]
    ) -> None:
        """Refuse to start a turn that the time left before the deadline cannot cover (the key's observed time
        per lease): give the lease back and end the admission.

        Raises:
            CapacityExhausted: the turn would not fit.
        """
        service_time = getattr(self._ledger, "service_time", None)
        takes = await service_time(admitted.candidate.key) if service_time is not None else None
        if remaining > 0 and (takes is None or not should_fail_fast(takes, remaining)):
            return
        if admitted.lease is not None:
            await admitted.lease.release()
        if takes is None:
            raise _exhausted("the run's deadline has passed", candidates, statuses)
        logger.warning(
            "autogen_capacity.fail_fast",
            key=admitted.candidate.key,
            takes_s=round(takes, 3),
            left_s=round(remaining, 3),
        )
        raise _exhausted(
            f"a turn of {admitted.candidate.name!r} takes about {takes:.3f}s and only {max(remaining, 0):.3f}s are "
            "left before the run's deadline",
            candidates,
            statuses,
            retry_after=takes,
        )

    def _next_window(
        self,
        candidates: Sequence[Candidate],
        usable: Sequence[Candidate],
        statuses: Mapping[str, KeyStatus],
        retries: int,
    ) -> tuple[Literal["backoff", "cooldown"], float]:
        """The next wait: until the soonest cooldown ends (free), or the schedule's next delay (a retry).

        Raises:
            CapacityExhausted: every usable candidate cools down past ``max_retry_after_ms``, the retries
                are spent, or the team's retry budget is.
        """
        schedule = usable[0].contract
        cooling = _soonest_cooldown(usable, statuses)
        if cooling is not None and cooling > schedule.max_retry_after_ms / 1000:
            if all(statuses[c.name].blocked_by == "cooldown" for c in usable):
                raise _exhausted(
                    f"the provider asked to wait {cooling:.1f}s, longer than max_retry_after_ms "
                    f"({schedule.max_retry_after_ms} ms) allows",
                    candidates,
                    statuses,
                    retry_after=cooling,
                )
            cooling = None  # another candidate may free up first: wait by the schedule
        if cooling is not None:
            return "cooldown", cooling
        retry = retries + 1
        if retry > schedule.max_caller_retries:
            raise _exhausted(
                f"nothing was admitted after {schedule.max_caller_retries} retries",
                candidates,
                statuses,
                retry_after=_soonest(statuses),
            )
        if retry > 1 and self._spend_retry is not None and not self._spend_retry():
            raise _exhausted("the team's retry budget is spent", candidates, statuses)
        return "backoff", _cap(schedule.delay(retry))

    async def _try(
        self, candidates: Sequence[Candidate], statuses: dict[str, KeyStatus], order: Order | None
    ) -> Admitted | None:
        open_ = [c for c in candidates if statuses[c.name].blocked_by is None]
        if not open_:
            return None
        for candidate in await order(open_, statuses) if order is not None else open_:
            if not candidate.leased:
                return Admitted(candidate, None)
            held = await self._ledger.try_acquire(candidate.key, candidate.contract)
            if held is not None:
                return Admitted(candidate, held)
            statuses[candidate.name] = await self.status(candidate)  # lost the race: report why
        return None


def _exhausted(
    why: str,
    candidates: Sequence[Candidate],
    statuses: Mapping[str, KeyStatus],
    *,
    retry_after: float | None = None,
) -> CapacityExhausted:
    return CapacityExhausted(exhausted_reason(why, candidates, statuses), retry_after=retry_after)


def exhausted_reason(why: str, candidates: Sequence[Candidate], statuses: Mapping[str, KeyStatus]) -> str:
    """The one "Capacity exhausted" message: why, then each candidate and what held it back."""
    held = ", ".join(f"{c.name}: {statuses[c.name].blocked_by or 'lost the race'}" for c in candidates)
    return f"Capacity exhausted: {why} ({held})"


async def record_overload(
    ledger: CapacityLedger,
    key: str,
    overload: Overload,
    *,
    overloads: int,
    schedule: AgentCapacity,
    exhausted_ttl_s: float,
    rng: random.Random | None = None,
    member: str | None = None,
    lease: Lease | None = None,
) -> float:
    """Write what an overload answer taught into the ledger and return how long ``key`` is out.

    ``throttled``: a cooldown for the provider's hint, else the schedule's delay for the ``overloads``-th
    overload in a row (and the ``lease`` of the answered call is reported throttled, for an adaptive key);
    ``exhausted``: the key is refused to everyone for ``exhausted_ttl_s``. Call it before the lease of the call
    that was answered is released (record before release). ``member``: the agent that answered (telemetry).
    """
    telemetry.overloaded(key, overload.kind, member)
    if overload.kind == "exhausted":
        await ledger.mark_exhausted(key, exhausted_ttl_s)
        return exhausted_ttl_s
    if lease is not None:
        await ledger.observe(lease, throttled=True)
    hinted = overload.retry_after_s
    out_for = _cap(hinted if hinted is not None else schedule.jittered_delay(overloads, rng or _rng))
    await ledger.cooldown(key, out_for)
    return out_for


async def settle(lease: Lease | None, ledger: CapacityLedger, key: str, contract: AgentCapacity, tokens: int) -> None:
    """A call answered: debit the ``tokens`` it used (when ``contract`` has a tpm), then release its lease (also
    when the debit fails)."""
    try:
        if lease is not None:
            await ledger.observe(lease, throttled=False)
        if tokens and contract.tpm is not None:
            await ledger.record_tokens(key, tokens)
    finally:
        if lease is not None:
            await lease.release()


async def admit_one(
    ledger: CapacityLedger, candidate: Candidate, *, priority: Priority = "default", deadline: float | None = None
) -> Lease | None:
    """Admit ``candidate`` alone, waiting by its contract (in ``priority``'s class, until ``deadline`` in loop
    time at the latest): its lease (``None`` when it is not leased).

    Raises:
        CapacityExhausted: as :func:`acquire` raises it.
        QueueFull: as :func:`acquire` raises it.
    """
    try:
        admitted = await Admission(ledger, priority=priority).admit([candidate], deadline=deadline)
    except QueueFull:
        raise
    except CapacityExhausted as exhausted:
        status = await ledger.status(candidate.key, candidate.contract)
        if status.blocked_by == "exhausted":
            raise CapacityExhausted(
                f"Capacity exhausted: {candidate.key!r} has no entitlement left", retry_after=status.ready_in
            ) from None
        logger.warning("autogen_capacity.exhausted", key=candidate.key, reason=str(exhausted))
        raise CapacityExhausted(
            str(exhausted), snapshot=await ledger.snapshot(), retry_after=exhausted.retry_after or status.ready_in
        ) from None
    assert admitted is not None  # no should_stop: only admission ends the loop
    return admitted.lease


async def acquire(
    key: str,
    capacity: AgentCapacity,
    *,
    ledger: CapacityLedger | None = None,
    priority: Priority = "default",
    deadline_s: float | None = None,
) -> Lease:
    """Take a lease on ``key``, waiting by ``capacity``'s contract while it is saturated.

    Waiting is event-driven (a release or a refill wakes the caller at once, oldest first); see the module
    documentation for the windows, what spends a retry and how long a cooldown is waited out. Under overload
    a ``critical`` caller is served before ``default`` and ``sheddable`` ones (the oldest of the highest class
    first); with ``deadline_s`` the caller never waits longer, and gives up at once when its expected wait in
    line already exceeds it.

    Raises:
        CapacityExhausted: the retries are used up, the key's entitlement is exhausted, or it cools down
            for longer than ``max_retry_after_ms``.
        QueueFull: ``max_queue`` callers already wait for the key.

    .. versionadded:: 0.1.0
    """
    deadline = asyncio.get_running_loop().time() + deadline_s if deadline_s is not None else None
    ledger = ledger if ledger is not None else default_ledger()
    held = await admit_one(ledger, Candidate(key, key, capacity), priority=priority, deadline=deadline)
    assert held is not None
    return held


@asynccontextmanager
async def lease(
    key: str,
    capacity: AgentCapacity,
    *,
    ledger: CapacityLedger | None = None,
    priority: Priority = "default",
    deadline_s: float | None = None,
) -> AsyncIterator[Lease]:
    """``async with lease(key, capacity):`` follows the contract for any block of code and releases the
    lease on the way out, whatever happens. ``priority`` and ``deadline_s`` as in :func:`acquire`.

    .. versionadded:: 0.1.0
    """
    held = await acquire(key, capacity, ledger=ledger, priority=priority, deadline_s=deadline_s)
    try:
        yield held
    finally:
        await held.release()


def _fail_fast(
    expected: float | None,
    remaining: float,
    deadline: float | None,
    candidates: Sequence[Candidate],
    statuses: Mapping[str, KeyStatus],
) -> None:
    """End a wait that cannot succeed in time: the expected wait in line already exceeds the time the contract
    (or the run's deadline) leaves.

    Raises:
        CapacityExhausted: it would not, carrying the expected wait as ``retry_after``.
    """
    if expected is None or not should_fail_fast(expected, remaining):
        return
    limit = "the run's deadline" if deadline is not None else "the contract"
    logger.warning("autogen_capacity.fail_fast", expected_s=round(expected, 3), left_s=round(remaining, 3), limit=limit)
    raise _exhausted(
        f"the expected wait in line ({expected:.3f}s) exceeds the {max(remaining, 0):.3f}s {limit} leaves",
        candidates,
        statuses,
        retry_after=expected,
    )


def _soonest_cooldown(usable: Sequence[Candidate], statuses: Mapping[str, KeyStatus]) -> float | None:
    waits = [s.ready_in for c in usable if (s := statuses[c.name]).blocked_by == "cooldown" and s.ready_in]
    return min(waits) if waits else None


def _soonest(statuses: Mapping[str, KeyStatus]) -> float | None:
    ready = [s.ready_in for s in statuses.values() if s.ready_in is not None]
    return min(ready) if ready else None


def _cap(seconds: float) -> float:
    """A delay or a hint, capped by :func:`autogen_capacity.testing.no_backoff` when it is on."""
    cap = _backoff_cap()
    return seconds if cap is None else min(seconds, cap)
