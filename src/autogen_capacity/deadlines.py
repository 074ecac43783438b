"""Deadlines: how long a run may take, how long a waiter can expect to wait, and when waiting is pointless.

Pure: nothing here sleeps or reads a clock; callers pass durations in seconds of the loop clock.

* :func:`deadline_from` reads a run's time limit from its termination condition (a ``TimeoutTermination``
  inside AutoGen's ``|`` / ``&`` combinations) and the team's own ``deadline_s``.
* :class:`ServiceTimes` keeps an exponentially weighted mean of how long each key's leases are held: the
  service time of one slot.
* :func:`expected_wait` turns a queue position into seconds; :func:`should_fail_fast` says when the expected
  wait already exceeds what is left, so the caller ends now (with the expected wait as ``retry_after``)
  instead of waiting it out.
"""

from __future__ import annotations

import math

from autogen_agentchat.base import AndTerminationCondition, OrTerminationCondition, TerminationCondition
from autogen_agentchat.conditions import TimeoutTermination

__all__ = [
    "AUTOGEN_ATTRIBUTES",
    "DEFAULT_ALPHA",
    "FAIL_FAST_MARGIN",
    "ServiceTimes",
    "deadline_from",
    "ewma",
    "expected_wait",
    "should_fail_fast",
]

AUTOGEN_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "autogen_agentchat.base.AndTerminationCondition": ("_conditions",),
    "autogen_agentchat.base.OrTerminationCondition": ("_conditions",),
}
"""Private attributes read here (AutoGen 0.7.5 offers no public way to list a combination's children): the
entries to merge into ``autogen_capacity._compat.PRIVATE_ATTRIBUTES``. A ``TimeoutTermination``'s limit is read
through its public ``dump_component()``."""

DEFAULT_ALPHA = 0.2
"""Weight of the newest observation in :class:`ServiceTimes` (about the last ten leases count)."""

FAIL_FAST_MARGIN = 0.25
""":func:`should_fail_fast` ends a wait only when the expected wait exceeds the time left by more than 25%:
the estimate is an upper bound for steady service times, and a run that could still be served is not ended
on a close call."""


def deadline_from(termination: TerminationCondition | None, *, deadline_s: float | None = None) -> float | None:
    """The seconds a run may last: the smaller of ``deadline_s`` and the limit its termination condition sets.

    The condition's limit: a ``TimeoutTermination``'s ``timeout_seconds``; for ``a | b``
    (``OrTerminationCondition``: the run ends when any child is met) the smallest limit among the children
    that have one; for ``a & b`` (``AndTerminationCondition``: the run ends only when every child is met) the
    largest, and only when every child has one, so ``TimeoutTermination(5) & TextMentionTermination("x")``
    bounds nothing: the timeout alone does not end the run. Nested combinations are followed; any other
    condition (``MaxMessageTermination``, ``ExternalTermination``, your own) sets no limit.

    The limit is counted from the run's start. AutoGen's ``TimeoutTermination`` counts from its construction
    or its last ``reset()`` and checks only after a message, so it may end a run earlier or later than this.

    Args:
        termination: The team's termination condition.
        deadline_s: The team's own limit per run (``deadline_s=`` on the team).

    Returns:
        Seconds, or ``None`` when nothing limits the run's duration.

    Raises:
        ValueError: ``deadline_s`` is not positive.

    Examples:
        >>> from autogen_agentchat.conditions import MaxMessageTermination, TimeoutTermination
        >>> deadline_from(TimeoutTermination(30) | MaxMessageTermination(5))
        30.0
        >>> deadline_from(TimeoutTermination(30), deadline_s=10)
        10.0

    .. versionadded:: 0.2.0
    """
    if deadline_s is not None and not deadline_s > 0:
        msg = f"deadline_s must be positive, got {deadline_s!r}"
        raise ValueError(msg)
    found = _limit(termination) if termination is not None else None
    limits = [float(s) for s in (found, deadline_s) if s is not None]
    return min(limits) if limits else None


def _limit(condition: TerminationCondition) -> float | None:
    if isinstance(condition, TimeoutTermination):
        return float(condition.dump_component().config["timeout_seconds"])
    if isinstance(condition, (OrTerminationCondition, AndTerminationCondition)):
        children: tuple[TerminationCondition, ...] = getattr(condition, "_conditions", ())
        limits = [_limit(child) for child in children]
        if isinstance(condition, OrTerminationCondition):
            known = [s for s in limits if s is not None]
            return min(known) if known else None
        if not limits or any(s is None for s in limits):
            return None
        return max(s for s in limits if s is not None)
    return None


def ewma(previous: float | None, sample: float, alpha: float = DEFAULT_ALPHA) -> float:
    """The exponentially weighted mean after ``sample``: ``previous + alpha * (sample - previous)``; the
    first sample (``previous is None``) is taken as it is. (A shared ledger's script computes the same.)"""
    return sample if previous is None else previous + alpha * (sample - previous)


class ServiceTimes:
    """How long each key's leases are held, as an exponentially weighted mean of what was observed.

    Args:
        alpha: Weight of the newest observation, in (0, 1].

    Raises:
        ValueError: ``alpha`` is out of range.

    Examples:
        >>> times = ServiceTimes(alpha=0.5)
        >>> times.observe("model", 0.2)
        >>> times.observe("model", 0.4)
        >>> times.per_slot("model")
        0.30000000000000004

    .. versionadded:: 0.2.0
    """

    __slots__ = ("_alpha", "_means")

    def __init__(self, alpha: float = DEFAULT_ALPHA) -> None:
        if not 0 < alpha <= 1:
            msg = f"alpha must be in (0, 1], got {alpha!r}"
            raise ValueError(msg)
        self._alpha = alpha
        self._means: dict[str, float] = {}

    def observe(self, key: str, seconds: float) -> None:
        """A lease on ``key`` was held for ``seconds`` (from its ``acquired_at`` to its release).

        Raises:
            ValueError: ``seconds`` is negative or not finite.
        """
        if not (math.isfinite(seconds) and seconds >= 0):
            msg = f"a lease is held for a finite, non-negative time, got {seconds!r}"
            raise ValueError(msg)
        self._means[key] = ewma(self._means.get(key), seconds, self._alpha)

    def per_slot(self, key: str) -> float | None:
        """The mean seconds one slot of ``key`` is held, or ``None`` before any lease on it was released."""
        return self._means.get(key)

    def forget(self, key: str) -> None:
        """Drop what was observed for ``key`` (its backend changed)."""
        self._means.pop(key, None)

    def snapshot(self) -> dict[str, float]:
        """Every key's mean, for dashboards and a ledger's snapshot."""
        return dict(self._means)

    def __repr__(self) -> str:
        return f"ServiceTimes({self._means!r}, alpha={self._alpha})"


def expected_wait(position: int, slots: int, per_slot_s: float) -> float:
    """Seconds until a waiter is handed a slot: ``ceil((position + 1) / slots) * per_slot_s``.

    ``position`` waiters are served before it (``WaitLine.position``: 0 when it is next) and the key serves
    ``slots`` at once (``max_concurrent``), each slot for ``per_slot_s`` (:meth:`ServiceTimes.per_slot`); the
    waiter gets a slot in the ``ceil((position + 1) / slots)``-th round of releases. It is an upper bound when
    every slot holds the same time and they were all just taken (on average a slot is half done: the real wait
    is shorter by up to one ``per_slot_s``). A key bounded by ``rpm`` instead serves one request per
    ``60 / rpm`` seconds: ``expected_wait(position, 1, 60 / rpm)``.

    Raises:
        ValueError: ``position`` is negative, ``slots`` is smaller than 1 or ``per_slot_s`` is negative.

    Examples:
        >>> expected_wait(0, 1, 0.2), expected_wait(3, 4, 0.2), expected_wait(4, 4, 0.2)
        (0.2, 0.2, 0.4)
    """
    if position < 0 or slots < 1 or not per_slot_s >= 0:
        msg = f"need position >= 0, slots >= 1, per_slot_s >= 0; got {position!r}, {slots!r}, {per_slot_s!r}"
        raise ValueError(msg)
    return math.ceil((position + 1) / slots) * per_slot_s


def should_fail_fast(expected_s: float | None, remaining_s: float | None, *, margin: float = FAIL_FAST_MARGIN) -> bool:
    """Whether to stop waiting now: no time is left, or the expected wait exceeds the time left by more than
    ``margin`` (``expected_s > remaining_s * (1 + margin)``).

    ``None`` for either side means unknown (no lease observed yet) or unbounded (no deadline): never fail fast
    on a guess. The time left is the smaller of the run's (:func:`deadline_from`, less what has elapsed) and
    the contract's (what the admission may still wait).

    Raises:
        ValueError: ``margin`` is negative.

    Examples:
        >>> should_fail_fast(12.0, 1.0), should_fail_fast(1.2, 1.0), should_fail_fast(None, 1.0)
        (True, False, False)
    """
    if margin < 0:
        msg = f"margin must not be negative, got {margin!r}"
        raise ValueError(msg)
    if remaining_s is None:
        return False
    if remaining_s <= 0:
        return True
    return expected_s is not None and expected_s > remaining_s * (1 + margin)
