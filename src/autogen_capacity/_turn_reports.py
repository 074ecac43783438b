"""What a team says when it defers members or waits for capacity: a typed event in the run stream (with
``emit_team_events=True``) and a structlog event, both built only when someone sees them (they are frequent under
load)."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence

from autogen_agentchat.messages import BaseAgentEvent

from ._engine import WaitReport
from ._logging import info_enabled, logger
from ._plan import MemberPlan
from .events import CapacityDeferredEvent, CapacityWaitEvent, Deferral, LiveLimitChangedEvent
from .ledger import KeyStatus, LiveLimitChange

__all__ = ["Emit", "TurnReports", "describe"]

Emit = Callable[[Callable[[], BaseAgentEvent]], Awaitable[None]]
"""Puts the event a factory builds in the run stream (building it only when team events are emitted)."""


class TurnReports:
    """Deferral and wait reports of one team."""

    __slots__ = ("_emit", "_events_on", "_plans", "_team_name")

    def __init__(self, team_name: str, plans: Mapping[str, MemberPlan], emit: Emit, events_on: bool) -> None:
        self._team_name = team_name
        self._plans = plans
        self._emit = emit
        self._events_on = events_on

    def _seen(self) -> bool:
        return self._events_on or info_enabled()

    async def deferred(self, statuses: Mapping[str, KeyStatus], speaker: str | None) -> None:
        """The candidates without headroom, and why, next to the ``speaker`` chosen (``None``: the team waits)."""
        if not self._seen():
            return
        deferred = {
            name: _reason(status, self._plans[name])
            for name, status in statuses.items()
            if status.blocked_by is not None and name != speaker
        }
        if not deferred:
            return
        logger.info("autogen_capacity.deferred", team=self._team_name, deferred=deferred, speaker=speaker)
        await self._emit(
            lambda: CapacityDeferredEvent(
                content=[Deferral(name=n, key=self._plans[n].key, reason=r) for n, r in deferred.items()],
                speaker=speaker,
                source=self._team_name,
            )
        )

    async def waiting(self, report: WaitReport) -> None:
        """Nobody has headroom: the team waits ``report.delay`` seconds at most, for a cooldown's end (free) or
        by its backoff schedule (retry ``report.retry`` of ``report.max_retries``)."""
        if not self._seen():
            return
        candidates = list(report.statuses)
        logger.info(
            "autogen_capacity.no_headroom",
            team=self._team_name,
            candidates=describe(candidates, report.statuses),
            window=report.window,
            attempt=report.retry,
            max_retries=report.max_retries,
            delay_s=round(report.delay, 3),
        )
        await self._emit(
            lambda: CapacityWaitEvent(
                content=candidates,
                attempt=report.retry,
                max_retries=report.max_retries,
                delay_s=report.delay,
                window=report.window,
                source=self._team_name,
            )
        )

    async def live_limits_changed(self, changes: Sequence[tuple[str, LiveLimitChange]]) -> None:
        """Adaptive keys whose live limit the members' answers moved (the ledger logged each already)."""
        for member, change in changes:
            await self._emit(functools.partial(_live_limit_event, member, change, self._team_name))


def _live_limit_event(member: str, change: LiveLimitChange, team: str) -> LiveLimitChangedEvent:
    return LiveLimitChangedEvent(
        content=change.reason,
        member=member,
        key=change.key,
        old=change.old,
        new=change.new,
        ceiling=change.ceiling,
        source=team,
    )


def describe(candidates: Sequence[str], statuses: Mapping[str, KeyStatus]) -> str:
    """Each candidate and why it could not take the turn."""
    return ", ".join(f"{name}: {statuses[name].blocked_by or 'lost the race'}" for name in candidates)


def _reason(status: KeyStatus, plan: MemberPlan) -> str:
    if plan.team is not None and status.blocked_by is not None:
        return "team"
    return status.blocked_by or "ok"
