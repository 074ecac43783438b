"""Helpers for testing code that uses autogen_capacity: a fake loop clock and event capture.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from types import TracebackType
from typing import Any

__all__ = ["AdmissionPasses", "FakeLoopClock", "count_admission_passes", "no_backoff", "settle"]

_BACKOFF_CAP: ContextVar[float | None] = ContextVar("autogen_capacity_backoff_cap", default=None)


@contextmanager
def no_backoff(max_wait_s: float = 0.001) -> Iterator[None]:
    """Cap every backoff delay and every cooldown recorded from an overload (the provider's hint or the
    schedule) at ``max_wait_s`` inside the block (stamina's testing switch): tests of code that backs off run at
    once. Retries are counted, limits enforced and overloads recorded as usual; a wait for a release still
    lasts until the release, and a cooldown already in the ledger is not shortened.

    It is a context variable: tasks started inside the block (a team's run) see it too.
    """
    token = _BACKOFF_CAP.set(max_wait_s)
    try:
        yield
    finally:
        _BACKOFF_CAP.reset(token)


def _backoff_cap() -> float | None:
    return _BACKOFF_CAP.get()


@dataclass
class AdmissionPasses:
    """What :func:`count_admission_passes` counted."""

    admissions: int = 0
    """Admissions that ended (admitted, exhausted, stopped or cancelled)."""
    passes: int = 0
    """Passes of the admission loop (checks of every candidate) over all of them."""
    most_in_one_admission: int = 0
    """The most passes one admission took: a loop that spins shows here."""


_PASSES: ContextVar[AdmissionPasses | None] = ContextVar("autogen_capacity_passes", default=None)


@contextmanager
def count_admission_passes(into: AdmissionPasses | None = None) -> Iterator[AdmissionPasses]:
    """Count the passes of every admission started inside the block (tasks started inside included) in
    ``into`` (a new :class:`AdmissionPasses` when ``None``): a guard against an admission loop that spins
    instead of waiting."""
    counts = into if into is not None else AdmissionPasses()
    token = _PASSES.set(counts)
    try:
        yield counts
    finally:
        _PASSES.reset(token)


def _record_pass(passes: int) -> None:
    counts = _PASSES.get()
    if counts is not None:
        counts.admissions += 1
        counts.passes += passes
        counts.most_in_one_admission = max(counts.most_in_one_admission, passes)


class FakeLoopClock:
    """Replaces the running loop's clock, which the ledger and every timer read.

    Time stands still until :meth:`advance` moves it; timers due by then fire on the loop's next pass.
    Use it as a context manager inside a coroutine (the aiolimiter ``MockLoopTime`` pattern)::

        with FakeLoopClock() as clock:
            ...
            clock.advance(10)
    """

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None, start: float = 0.0) -> None:
        self._loop = loop
        self._now = start
        self._previous: Callable[[], float] | None = None

    def time(self) -> float:
        """The fake time now."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward; a negative jump is refused, as in trio's ``MockClock.jump``."""
        if seconds < 0:
            msg = f"time cannot go backwards (advance({seconds}))"
            raise ValueError(msg)
        self._now += seconds

    def __enter__(self) -> FakeLoopClock:
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        self._previous = vars(loop).get("time")  # another fake clock, when nested
        loop.time = self.time  # type: ignore[method-assign]
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._loop is not None
        if self._previous is None:
            del self._loop.time  # back to the class's clock
        else:
            self._loop.time = self._previous  # type: ignore[method-assign]


async def settle(*tasks: asyncio.Future[Any], rounds: int = 20) -> None:
    """Let ready callbacks and tasks run without moving time (never ``sleep(0.1)``)."""
    for _ in range(rounds):
        if tasks and all(task.done() for task in tasks):
            return
        await asyncio.sleep(0)
