"""What an adaptive key learns from one answer, the same in every ledger: its live limit (``adaptive.LiveLimit``)
and its overload rate; a move of the limit is reported and logged."""

from __future__ import annotations

from dataclasses import dataclass

from .._logging import logger
from ..adaptive import LiveLimit
from .base import LiveLimitChange

__all__ = ["OVERLOAD_RATE_ALPHA", "Answer", "moved", "overload_rate"]

OVERLOAD_RATE_ALPHA = 0.1
"""Weight of each answer in an adaptive key's overload rate: a 429 takes a healthy key to 0.1, and about 22
answers served bring it back under 0.01."""


def overload_rate(rate: float, *, throttled: bool) -> float:
    """The overload rate after one more answer."""
    return rate + OVERLOAD_RATE_ALPHA * (float(throttled) - rate)


@dataclass(frozen=True, slots=True)
class Answer:
    """The answer to one lease on an adaptive key."""

    throttled: bool
    in_flight: int
    """Leases on the key when it was admitted, itself included."""
    admitted_at: float
    at: float
    """When it answered (the same clock as ``admitted_at``)."""

    def teach(self, live: LiveLimit) -> None:
        """Teach ``live`` this answer."""
        if self.throttled:
            live.on_throttled(self.at, in_flight=self.in_flight, admitted_at=self.admitted_at)
        else:
            live.on_success(self.at - self.admitted_at, self.in_flight, self.at, admitted_at=self.admitted_at)


def moved(key: str, before: int, live: LiveLimit) -> LiveLimitChange | None:
    """The change of ``key``'s live limit from ``before`` (logged), or ``None`` when it did not move."""
    if live.limit == before:
        return None
    last = live.last_change
    change = LiveLimitChange(key, before, live.limit, live.ceiling, last.reason if last is not None else "throttled")
    logger.info(
        "autogen_capacity.live_limit_changed",
        key=key,
        old=change.old,
        new=change.new,
        ceiling=change.ceiling,
        reason=change.reason,
    )
    return change
