"""The pure rules the admission engine's loop applies to the statuses it read: the one "Capacity exhausted"
message, when a read still holds, the soonest cooldown or refill, and delays as the test helpers cap them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from .exceptions import CapacityExhausted
from .ledger import KeyStatus
from .testing import _backoff_cap

if TYPE_CHECKING:
    from ._engine import Candidate

__all__ = [
    "ROUTED_AROUND",
    "STATUS_REUSE_S",
    "capped",
    "exhausted",
    "exhausted_reason",
    "soonest",
    "soonest_cooldown",
    "unchanged_without_wakeup",
]

ROUTED_AROUND = KeyStatus(0.0, "exhausted")
STATUS_REUSE_S = 1.0
"""Seconds a read that found every candidate full is trusted while no wake-up comes (see ``Admission.admit``)."""


def exhausted(
    why: str,
    candidates: Sequence[Candidate],
    statuses: Mapping[str, KeyStatus],
    *,
    retry_after: float | None = None,
) -> CapacityExhausted:
    return CapacityExhausted(exhausted_reason(why, candidates, statuses), retry_after=retry_after)


def exhausted_reason(why: str, candidates: Sequence[Candidate], statuses: Mapping[str, KeyStatus]) -> str:
    """The one "Capacity exhausted" message: why, then each candidate whose status was read and what held it back
    (none was read when the first choice was leased straight away)."""
    held = ", ".join(
        f"{c.name}: {status.blocked_by or 'lost the race'}" for c in candidates if (status := statuses.get(c.name))
    )
    return f"Capacity exhausted: {why} ({held})" if held else f"Capacity exhausted: {why}"


def unchanged_without_wakeup(candidates: Sequence[Candidate], statuses: Mapping[str, KeyStatus], age: float) -> bool:
    """Whether statuses read ``age`` seconds ago still hold when no wake-up came since: every candidate waited
    for a release (a release wakes a waiter, a refill or a cooldown's end has a ``ready_in`` and a timer), and
    the read is recent enough that a lease expired by its holder's death (which wakes nobody) is seen soon."""
    return (
        age < STATUS_REUSE_S
        and bool(statuses)
        and all(c.probe is None for c in candidates)
        and all(s is ROUTED_AROUND or (s.blocked_by == "slots" and s.ready_in is None) for s in statuses.values())
    )


def soonest_cooldown(usable: Sequence[Candidate], statuses: Mapping[str, KeyStatus]) -> float | None:
    waits = [s.ready_in for c in usable if (s := statuses[c.name]).blocked_by == "cooldown" and s.ready_in]
    return min(waits) if waits else None


def soonest(statuses: Mapping[str, KeyStatus]) -> float | None:
    ready = [s.ready_in for s in statuses.values() if s.ready_in is not None]
    return min(ready) if ready else None


def capped(seconds: float) -> float:
    """A delay or a hint, capped by :func:`autogen_capacity.testing.no_backoff` when it is on."""
    cap = _backoff_cap()
    return seconds if cap is None else min(seconds, cap)
