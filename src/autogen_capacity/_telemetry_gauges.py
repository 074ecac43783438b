"""The ledger gauges (``in_flight``, ``headroom``, ``live_limit``): what a task on the loop read from a ledger, for
the SDK's callbacks to report from any thread. :func:`autogen_capacity.telemetry.observe_ledger` starts one."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from contextlib import suppress
from types import TracebackType
from typing import TYPE_CHECKING

from ._logging import logger
from .contracts import AgentCapacity
from .ledger.base import CapacityLedger

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Observation

try:
    from opentelemetry import metrics as _metrics
except ImportError:  # pragma: no cover - autogen-core depends on opentelemetry-api
    _metrics = None  # type: ignore[assignment]

__all__ = ["KEY", "LedgerObserver", "observe_headroom", "observe_in_flight", "observe_live_limit"]

KEY = "autogen_capacity.key"


class LedgerObserver:
    """Feeds the ``in_flight``, ``headroom`` and ``live_limit`` gauges from one ledger.

    The SDK reads observable gauges in its export thread (or wherever ``collect`` is called, the loop's thread
    included), where the ledger cannot be awaited: calling back into the loop from there would block the export
    (or deadlock when the loop itself collects), and an :class:`InMemoryLedger` is not thread-safe. So a task on
    the loop refreshes the observations every ``interval_s`` (the snapshot plus each contract key's status),
    and the callbacks only read the last tuple it built: a gauge is at most ``interval_s`` old. When the ledger
    fails, the gauges report nothing until it answers again (no stale values).

    .. versionadded:: 0.2.0
    """

    __slots__ = ("_contracts", "_ledger", "_task", "headroom", "in_flight", "interval_s", "live_limit")

    def __init__(
        self, ledger: CapacityLedger, contracts: Mapping[str, AgentCapacity] | None, interval_s: float
    ) -> None:
        self._ledger = ledger
        self._contracts = dict(contracts or {})
        self.interval_s = interval_s
        self.in_flight: tuple[tuple[int, Mapping[str, str]], ...] = ()
        self.headroom: tuple[tuple[float, Mapping[str, str]], ...] = ()
        self.live_limit: tuple[tuple[int, Mapping[str, str]], ...] = ()
        self._task: asyncio.Task[None] | None = None

    async def refresh(self) -> None:
        """Read the ledger now (on the loop) and publish what the gauges report next."""
        try:
            snapshot = await self._ledger.snapshot()
            statuses = {key: await self._ledger.status(key, c) for key, c in self._contracts.items()}
        except Exception as error:
            self.in_flight = self.headroom = self.live_limit = ()
            logger.warning("autogen_capacity.observe_failed", ledger=repr(self._ledger), error=repr(error))
            return
        keys = sorted({*snapshot, *self._contracts})
        self.in_flight = tuple((u.in_flight if (u := snapshot.get(k)) else 0, {KEY: k}) for k in keys)
        self.headroom = tuple((s.headroom, {KEY: k}) for k, s in sorted(statuses.items()))
        self.live_limit = tuple((u.live_limit, {KEY: k}) for k, u in sorted(snapshot.items()) if u.live_limit)

    async def _run(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.interval_s)

    def _start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="autogen_capacity.observe_ledger")
        global _observers
        _observers = (*_observers, self)

    async def aclose(self) -> None:
        """Stop refreshing; the gauges stop reporting this ledger."""
        global _observers
        _observers = tuple(o for o in _observers if o is not self)
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def __aenter__(self) -> LedgerObserver:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


_observers: tuple[LedgerObserver, ...] = ()
"""Replaced, never mutated: the export thread iterates over a tuple the loop does not change under it."""


def observe_in_flight(options: CallbackOptions) -> list[Observation]:
    return [_metrics.Observation(v, a) for o in _observers for v, a in o.in_flight]


def observe_headroom(options: CallbackOptions) -> list[Observation]:
    return [_metrics.Observation(v, a) for o in _observers for v, a in o.headroom]


def observe_live_limit(options: CallbackOptions) -> list[Observation]:
    return [_metrics.Observation(v, a) for o in _observers for v, a in o.live_limit]
