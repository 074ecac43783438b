"""One call under a provider's contract, retried whole after an overload: what the capacity-aware tools and the
capacity-aware model client share. The rules are the engine's (:mod:`autogen_capacity.admission`)."""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Generic, TypeVar

from autogen_core import CancellationToken

from ._engine import Candidate
from ._logging import logger
from .admission import admit_linked, record_overload, settle
from .contracts import AgentCapacity
from .exceptions import CapacityExhausted
from .ledger import CapacityLedger
from .overload import OverloadClassifier, classify_overload
from .priority import Priority

__all__ = ["ContractCall"]

T = TypeVar("T")


class ContractCall(Generic[T]):
    """Runs calls to one provider under its contract: lease, wait, retry on overload, give up.

    Args:
        name: The provider's name (in errors and logs).
        key: Its ledger key.
        contract: Its limits and backoff schedule.
        leases: Whether a call takes a lease on ``key`` (``False``: someone else holds one for it).
        tokens_of: The model tokens a final item reports (``None``: not the final item); they are debited
            before the lease is released.
        ledger: Where leases and cooldowns are recorded (read at each call).
        event: The log event of an overloaded attempt, and the field that names the provider in it.
    """

    __slots__ = (
        "_classify",
        "_event",
        "_exhausted_ttl_s",
        "_ledger",
        "_rng",
        "_tokens_of",
        "contract",
        "key",
        "leases",
        "name",
        "priority",
    )

    def __init__(
        self,
        name: str,
        key: str,
        contract: AgentCapacity,
        *,
        leases: bool,
        tokens_of: Callable[[T], int | None],
        ledger: Callable[[], CapacityLedger],
        classify: OverloadClassifier | None,
        exhausted_ttl_s: float,
        rng: random.Random | None,
        priority: Priority,
        event: tuple[str, str],
    ) -> None:
        self.name = name
        self._event = event
        self.key = key
        self.contract = contract
        self.leases = leases
        self.priority: Priority = priority
        self._tokens_of = tokens_of
        self._ledger = ledger
        self._classify = classify or classify_overload
        self._exhausted_ttl_s = exhausted_ttl_s
        self._rng = rng

    async def stream(
        self,
        start: Callable[[], AsyncGenerator[T, None]],
        token: CancellationToken | None,
        *,
        before_attempt: Callable[[], Awaitable[Callable[[], Awaitable[None]] | None]] | None = None,
    ) -> AsyncGenerator[T, None]:
        """Run ``start()`` under the contract, yielding what it yields; retried whole after an overload.

        Each attempt is admitted by the same engine as a team's turns (a cooldown the provider asked for is
        waited out before the retry); what an attempt taught (its tokens, a cooldown, an exhausted mark) is
        recorded before its lease is released. ``before_attempt`` may return an undo, run after an overload
        before the retry."""
        ledger = self._ledger()
        candidate = Candidate(self.name, self.key, self.contract, leased=self.leases)
        overloads = 0
        while True:
            held = await admit_linked(ledger, candidate, token, priority=self.priority)
            undo: Callable[[], Awaitable[None]] | None = None
            try:
                if before_attempt is not None:
                    undo = await before_attempt()
                async with contextlib.aclosing(start()) as attempt:  # closed with this stream, at once
                    async for item in attempt:
                        tokens = self._tokens_of(item)
                        if tokens is not None and held is not None:
                            await settle(held, ledger, self.key, self.contract, tokens)
                        yield item
                return
            except Exception as exc:
                overload = self._classify(exc)
                if overload is None:
                    raise
                error = exc
                if undo is not None:
                    await undo()
                overloads += 1
                out_for = await record_overload(
                    ledger,
                    self.key,
                    overload,
                    overloads=overloads,
                    schedule=self.contract,
                    exhausted_ttl_s=self._exhausted_ttl_s,
                    rng=self._rng,
                    member=self.name,
                    lease=held,
                )
            finally:
                if held is not None:
                    await held.release()
            self._log(error, overload.kind, out_for, overloads)
            if overload.kind == "exhausted":
                raise CapacityExhausted(
                    f"Capacity exhausted: {self.name!r} has no entitlement left ({type(error).__name__}: {error})",
                    snapshot=await ledger.snapshot(),
                    retry_after=out_for,
                ) from error
            if overloads > self.contract.max_caller_retries:
                raise CapacityExhausted(
                    f"Capacity exhausted: {self.name!r} was still overloaded after "
                    f"{self.contract.max_caller_retries} retries ({type(error).__name__}: {error})",
                    snapshot=await ledger.snapshot(),
                    retry_after=out_for,
                ) from error

    def _log(self, error: Exception, kind: str, out_for: float, retries: int) -> None:
        event, field = self._event
        logger.warning(
            event,
            **{field: self.name},
            key=self.key,
            kind=kind,
            out_for_s=round(out_for, 3),
            retries=retries,
            max_retries=self.contract.max_caller_retries,
            error=repr(error),
        )
