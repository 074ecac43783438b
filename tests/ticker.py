"""A ticker on an event loop that measures its longest stall: the tests' check that async code never spins."""

from __future__ import annotations

import asyncio
import gc
import time

__all__ = ["Ticker"]


class Ticker:
    """Ticks on the machine's loop and keeps the longest stall between ticks while the loop runs, less the time
    the garbage collector stopped the whole interpreter meanwhile (a pause, not a loop that fails to yield)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, period: float = 0.002) -> None:
        self.loop = loop
        self.period = period
        self.longest = 0.0
        self.last = loop.time()
        self.collecting = 0.0
        self._collection_started: float | None = None
        gc.callbacks.append(self._on_collection)
        self.task = loop.create_task(self._tick())

    def _on_collection(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._collection_started = time.perf_counter()
        elif self._collection_started is not None:
            self.collecting += time.perf_counter() - self._collection_started
            self._collection_started = None

    def close(self) -> None:
        """Stop ticking."""
        self.task.cancel()
        if self._on_collection in gc.callbacks:
            gc.callbacks.remove(self._on_collection)

    def __enter__(self) -> Ticker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            now = self.loop.time()
            self.longest = max(self.longest, now - self.last - self.period - self.collecting)
            self.last = now
            self.collecting = 0.0

    def resume(self) -> None:
        """The loop starts running again: the time it stood still between steps is not a stall."""
        self.last = self.loop.time()
        self.collecting = 0.0
