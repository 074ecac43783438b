"""Following a contract from the caller's side: wait by the provider's backoff schedule for a lease."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ._logging import logger
from .contracts import AgentCapacity
from .exceptions import CapacityExhausted
from .ledger import CapacityLedger, Lease, default_ledger

__all__ = ["acquire", "lease"]


async def acquire(
    key: str,
    capacity: AgentCapacity,
    *,
    ledger: CapacityLedger | None = None,
    rng: random.Random | None = None,
) -> Lease:
    """Take a lease on ``key``, waiting by ``capacity``'s backoff schedule while it is saturated.

    Waiting is event-driven (a release or a refill wakes the caller at once); each wait lasts at most
    the next (jittered) delay of the schedule, and only a wait whose deadline passes without admission
    uses up one of ``max_caller_retries``.

    Raises:
        CapacityExhausted: the retries are used up, or the key's entitlement is exhausted.
        QueueFull: ``max_queue`` callers already wait for the key.

    .. versionadded:: 0.1.0
    """
    ledger = ledger if ledger is not None else default_ledger()
    loop = asyncio.get_running_loop()
    attempt = 0
    deadline = loop.time()
    while True:
        held = await ledger.try_acquire(key, capacity)
        if held is not None:
            return held
        now = loop.time()
        status = await ledger.status(key, capacity)
        if status.blocked_by == "exhausted":
            raise CapacityExhausted(f"Capacity exhausted: {key!r} has no entitlement left", retry_after=status.ready_in)
        if now >= deadline:
            attempt += 1
            if attempt > capacity.max_caller_retries:
                logger.warning("autogen_capacity.exhausted", key=key, retries=capacity.max_caller_retries)
                raise CapacityExhausted(
                    f"Capacity exhausted: {key!r} admitted nothing after {capacity.max_caller_retries} retries"
                    f" ({status.blocked_by})",
                    snapshot=await ledger.snapshot(),
                    retry_after=status.ready_in,
                )
            delay = capacity.jittered_delay(attempt, rng)
            deadline = now + delay
            logger.debug(
                "autogen_capacity.backoff_scheduled",
                key=key,
                attempt=attempt,
                delay=round(delay, 3),
                reason=status.blocked_by,
            )
        await ledger.wait_for_change({key: capacity}, deadline - now)


@asynccontextmanager
async def lease(
    key: str,
    capacity: AgentCapacity,
    *,
    ledger: CapacityLedger | None = None,
    rng: random.Random | None = None,
) -> AsyncIterator[Lease]:
    """``async with lease(key, capacity):`` follows the contract for any block of code and releases the
    lease on the way out, whatever happens.

    .. versionadded:: 0.1.0
    """
    held = await acquire(key, capacity, ledger=ledger, rng=rng)
    try:
        yield held
    finally:
        await held.release()
