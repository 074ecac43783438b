"""The admission engine: one attempt loop and one overload policy for the team's manager, :func:`acquire` /
:func:`lease` and the capacity-aware tools.

One admission leases the first candidate, in preference order, whose key admits now. When nobody can be
admitted it waits in the candidates' waiting lines (its FIFO place kept from one wait to the next) for a
release, a refill or a cooldown's end, within a window:

* while a usable candidate cools down after an overload, the window lasts until the soonest cooldown ends
  (the provider's word extends a wait, never shortens it) and costs no retry; a cooldown longer than the
  contract's ``max_retry_after_ms`` is not waited out: the admission ends at once, carrying ``retry_after``;
* otherwise window *k* lasts the schedule's *k*-th delay exactly (jitter spreads only the cooldowns a caller
  picks itself), and a window that ends with the candidates still refused spends retry *k*; past
  ``max_caller_retries`` the admission ends exhausted;
* a wake-up that loses the race to another caller costs nothing: the window goes on;
* in all, an admission never waits longer than its schedule plus ``max_retry_after_ms``, nor past a deadline
  (and it ends at once when its expected wait in line already exceeds the time left: fail fast).

Under overload a freed slot goes to the oldest waiter of the highest priority class present (``critical``,
``default``, ``sheddable``; a long wait ages up), and past ``max_queue`` a lower class is shed first.

Every pass that admits nobody awaits a real wake source (a wake-up, the window's end, the termination poll).
What a turn taught is written before its slot is handed on: :func:`record_overload` and
:func:`settle` record a cooldown, an exhausted mark or the tokens used, then release.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from autogen_core import CancellationToken

from . import telemetry
from ._engine import Admission, Admitted, Candidate, Observer, Order, WaitReport
from ._engine_rules import capped, exhausted_reason
from ._logging import logger
from .contracts import AgentCapacity
from .exceptions import CapacityExhausted, QueueFull
from .ledger import CapacityLedger, Lease, LiveLimitChange, default_ledger
from .overload import OverloadSignal
from .priority import Priority

__all__ = [
    "Admission",
    "Admitted",
    "Candidate",
    "Observer",
    "Order",
    "WaitReport",
    "acquire",
    "admit_linked",
    "admit_one",
    "exhausted_reason",
    "lease",
    "record_overload",
    "settle",
]

_rng = random.Random()
"""The jitter of cooldowns a caller picks itself, unless one is given."""


async def record_overload(
    ledger: CapacityLedger,
    key: str,
    overload: OverloadSignal,
    *,
    overloads: int,
    schedule: AgentCapacity,
    exhausted_ttl_s: float,
    rng: random.Random | None = None,
    member: str | None = None,
    lease: Lease | None = None,
    changes: list[LiveLimitChange] | None = None,
) -> float:
    """Write what an overload answer taught into the ledger and return how long ``key`` is out.

    ``throttled``: a cooldown for the provider's hint, else the schedule's delay for the ``overloads``-th
    overload in a row (and the ``lease`` of the answered call is reported throttled, for an adaptive key);
    ``exhausted``: the key is refused to everyone for ``exhausted_ttl_s``. Call it before the lease of the call
    that was answered is released (record before release). ``member``: the agent that answered (telemetry).
    A live limit the answer moved is appended to ``changes``.
    """
    telemetry.overloaded(key, overload.kind, member)
    if overload.kind == "exhausted":
        await ledger.mark_exhausted(key, exhausted_ttl_s)
        return exhausted_ttl_s
    if lease is not None:
        change = await ledger.observe(lease, throttled=True)
        if change is not None and changes is not None:
            changes.append(change)
    hinted = overload.retry_after_s
    out_for = capped(hinted if hinted is not None else schedule.jittered_delay(overloads, rng or _rng))
    await ledger.cooldown(key, out_for)
    return out_for


async def settle(
    lease: Lease | None, ledger: CapacityLedger, key: str, contract: AgentCapacity, tokens: int
) -> LiveLimitChange | None:
    """A call answered: debit the ``tokens`` it used (when ``contract`` has a tpm), then release its lease (also
    when the debit fails). Returns the live limit the answer moved, if any."""
    change = None
    try:
        if lease is not None:
            change = await ledger.observe(lease, throttled=False)
        if tokens and contract.tpm is not None:
            await ledger.record_tokens(key, tokens)
    finally:
        if lease is not None:
            await lease.release()
    return change


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


async def admit_linked(
    ledger: CapacityLedger,
    candidate: Candidate,
    token: CancellationToken | None,
    *,
    priority: Priority = "default",
    deadline: float | None = None,
) -> Lease | None:
    """:func:`admit_one` in a task of its own, cancelled with ``token`` as well as with the caller. A caller
    cancelled after that task was granted its lease, before it resumed, gives the lease back (nobody else holds
    it: a slot would be lost)."""
    admission = asyncio.ensure_future(admit_one(ledger, candidate, priority=priority, deadline=deadline))
    if token is not None:
        token.link_future(admission)
    try:
        return await admission
    except asyncio.CancelledError:
        if admission.done() and not admission.cancelled() and admission.exception() is None:
            granted = admission.result()
            if granted is not None:
                await granted.release()
        raise


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
