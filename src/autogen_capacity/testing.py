"""Helpers for testing code that uses autogen_capacity: a fake loop clock and event capture.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType
from typing import Any

__all__ = ["FakeLoopClock", "settle"]


class FakeLoopClock:
    """Replaces the running loop's clock, which the ledger, aiolimiter and every timer read.

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
