"""The admission engine's attempt loop, shared by the team's manager, :func:`~autogen_capacity.acquire` and the
capacity-aware tools. The rules it follows are stated in :mod:`autogen_capacity.admission`."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from . import telemetry
from ._engine_rules import (
    ROUTED_AROUND,
    capped,
    exhausted,
    soonest,
    soonest_cooldown,
    unchanged_without_wakeup,
)
from ._logging import logger
from .contracts import AgentCapacity
from .deadlines import should_fail_fast
from .exceptions import CapacityExhausted
from .ledger import CapacityLedger, InMemoryLedger, KeyStatus, Lease
from .ledger._limits import IDLE
from .ledger.base import WaitQueue
from .priority import Priority
from .testing import _record_pass

__all__ = [
    "Admission",
    "Admitted",
    "Candidate",
    "Observer",
    "Order",
    "WaitReport",
]


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

    __slots__ = ("_first_idle", "_ledger", "_observer", "_poll_s", "_priority", "_should_stop", "_spend_retry", "_team")

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
        self._first_idle = True  # whether the first choice was idle at the last look: lease it before reading

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
            elif c.key in found and (asked[c.key] is c.contract or asked[c.key] == c.contract):
                statuses[c.name] = found[c.key]
            else:  # a probe, an unchecked candidate, or a key shared under another contract
                statuses[c.name] = await self.status(c)
        return statuses

    async def admit(
        self,
        candidates: Sequence[Candidate],
        *,
        order: Order | None = None,
        routed_around: frozenset[str] = frozenset(),
        deadline: float | None = None,
        first_if_idle: bool = False,
    ) -> Admitted | None:
        """Admit the first candidate in ``order`` whose key admits, waiting by contract while none does. Without an
        ``order``, ``candidates`` are in preference order, and the first is leased before anything is read. With
        ``first_if_idle`` (an ``order`` that ranks by headroom, ties in the order of ``candidates``), the first is
        leased before anything is read when its key has room for anything (nothing can rank above it), as long as
        it had at the last look (under load, statuses are read first).

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
        statuses: dict[str, KeyStatus] = {}
        read_at = -math.inf
        woken, woken_by = True, None
        try:
            while True:
                passes += 1
                admitted = None
                if passes == 1 and candidates and (order is None or (first_if_idle and self._first_idle)):
                    admitted = await self._lease_first(candidates[0], routed_around, idle_only=order is not None)
                elif passes == 1 and candidates and first_if_idle:  # under load: lease and read in one round trip
                    admitted, read = await self._lease_first_reading_rest(candidates, routed_around)
                    if read is not None:
                        statuses, read_at, woken = read, loop.time(), False
                        self._first_idle = admitted is not None or read[candidates[0].name] == IDLE
                if woken_by is not None:  # a slot freed there, likely handed to this caller: take it first
                    admitted = await self._try_woken(candidates, statuses, order, woken_by)
                    woken = False  # what the wake-up changed is read: the refusal's status replaced the key's
                if admitted is None:
                    if woken or (
                        passes > 1 and not unchanged_without_wakeup(candidates, statuses, loop.time() - read_at)
                    ):
                        statuses = await self._statuses(candidates, routed_around)
                        read_at = loop.time()
                        if first_if_idle and passes == 1:
                            self._first_idle = statuses[candidates[0].name] == IDLE
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
                    raise exhausted("every candidate is exhausted or out of retries", candidates, statuses)
                schedule = usable[0].contract
                now = loop.time()
                if now >= window_end:
                    if retries == 0 and window_end == bound:  # the first refusal: the whole wait's bound
                        bound = now + capped(schedule.backoff_total()) + schedule.max_retry_after_ms / 1000
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
                            raise exhausted(why, candidates, statuses)
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
                woken = await queue.wait(timeout)
                woken_by = queue.woken_by if woken else None
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
        return await self._ledger.join_queue(waits, priority=self._priority)

    async def _turn_fits(
        self, admitted: Admitted, remaining: float, candidates: Sequence[Candidate], statuses: Mapping[str, KeyStatus]
    ) -> None:
        """Refuse to start a turn that the time left before the deadline cannot cover (the key's observed time
        per lease): give the lease back and end the admission.

        Raises:
            CapacityExhausted: the turn would not fit.
        """
        takes = await self._ledger.service_time(admitted.candidate.key)
        if remaining > 0 and (takes is None or not should_fail_fast(takes, remaining)):
            return
        if admitted.lease is not None:
            await admitted.lease.release()
        if takes is None:
            raise exhausted("the run's deadline has passed", candidates, statuses)
        logger.warning(
            "autogen_capacity.fail_fast",
            key=admitted.candidate.key,
            takes_s=round(takes, 3),
            left_s=round(remaining, 3),
        )
        raise exhausted(
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
        cooling = soonest_cooldown(usable, statuses)
        if cooling is not None and cooling > schedule.max_retry_after_ms / 1000:
            if all(statuses[c.name].blocked_by == "cooldown" for c in usable):
                raise exhausted(
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
            raise exhausted(
                f"nothing was admitted after {schedule.max_caller_retries} retries",
                candidates,
                statuses,
                retry_after=soonest(statuses),
            )
        if retry > 1 and self._spend_retry is not None and not self._spend_retry():
            raise exhausted("the team's retry budget is spent", candidates, statuses)
        return "backoff", capped(schedule.delay(retry))

    async def _lease_first(
        self, first: Candidate, routed_around: frozenset[str], *, idle_only: bool = False
    ) -> Admitted | None:
        """Lease the preferred candidate before reading any status (with ``idle_only``, only when its key has room
        for anything): an admission that gets its first choice costs one ledger call (one round trip on Redis),
        whatever the number of candidates, and one that nothing limits costs none. Refused, or a nested team, it
        reads every status as usual."""
        if first.probe is not None or first.name in routed_around:
            return None
        if not first.leased:
            return None if first.checked else Admitted(first, None)  # unchecked: idle by definition
        held = await self._ledger.acquire_or_status(first.key, first.contract, idle_only=idle_only)
        return Admitted(first, held) if isinstance(held, Lease) else None

    async def _lease_first_reading_rest(
        self, candidates: Sequence[Candidate], routed_around: frozenset[str]
    ) -> tuple[Admitted | None, dict[str, KeyStatus] | None]:
        """The first candidate's idle-only lease and every other candidate's status, together (one pipelined batch,
        one round trip, on Redis): under load, an admission whose first choice turns out idle is admitted in one
        round trip, and one refused has every status (the first's from its refusal) for the rest of the pass.
        ``(None, None)`` for a first candidate that is not leased through the ledger (the pass reads as usual)."""
        first = candidates[0]
        if first.probe is not None or first.name in routed_around or not first.leased:
            return None, None
        lease = self._ledger.acquire_or_status(first.key, first.contract, idle_only=True)
        if isinstance(self._ledger, InMemoryLedger):  # its calls never wait: nothing to batch, no task's loop pass
            leasing: asyncio.Future[Lease | KeyStatus] = asyncio.get_running_loop().create_future()
            leasing.set_result(await lease)
        else:  # a task, so that the lease's script goes in the same batch as the reads
            leasing = asyncio.ensure_future(lease)
        try:
            read = await self._statuses(candidates[1:], routed_around)
        except BaseException:  # the read failed or the admission was cancelled: give back what the lease got
            leasing.cancel()
            await _release_if_leased(leasing)
            raise
        held = await leasing
        if isinstance(held, Lease):
            return Admitted(first, held), {first.name: KeyStatus(0.0), **read}
        return None, {first.name: held, **read}

    async def _try_woken(
        self, candidates: Sequence[Candidate], statuses: dict[str, KeyStatus], order: Order | None, key: str
    ) -> Admitted | None:
        """After a wake-up on ``key``: lease the candidates on it straight away, as if only they had headroom
        (the others were blocked at the last read, and only this key changed), with no status read first. Refused,
        each keeps the status that refused it."""
        woken = [c for c in candidates if c.key == key and c.leased and c.probe is None and c.name in statuses]
        if not woken:
            return None
        for candidate in await order(woken, statuses) if order is not None else woken:
            held = await self._ledger.acquire_or_status(candidate.key, candidate.contract)
            if isinstance(held, Lease):
                statuses[candidate.name] = KeyStatus(0.0)  # admitted: no longer deferred
                return Admitted(candidate, held)
            statuses[candidate.name] = held
        return None

    async def _try(
        self, candidates: Sequence[Candidate], statuses: dict[str, KeyStatus], order: Order | None
    ) -> Admitted | None:
        open_ = [c for c in candidates if statuses[c.name].blocked_by is None]
        if not open_:
            return None
        for candidate in await order(open_, statuses) if order is not None else open_:
            if not candidate.leased:
                return Admitted(candidate, None)
            held = await self._ledger.acquire_or_status(candidate.key, candidate.contract)
            if isinstance(held, Lease):
                return Admitted(candidate, held)
            statuses[candidate.name] = held  # lost the race: report why
        return None


async def _release_if_leased(leasing: asyncio.Future[Lease | KeyStatus]) -> None:
    """Give back the lease an acquire got when the admission beside it failed (one cancelled on its way gives back
    what it is granted by itself)."""
    try:
        held = await leasing
    except BaseException:  # cancelled or failed: nothing to give back
        return
    if isinstance(held, Lease):
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
    raise exhausted(
        f"the expected wait in line ({expected:.3f}s) exceeds the {max(remaining, 0):.3f}s {limit} leaves",
        candidates,
        statuses,
        retry_after=expected,
    )
