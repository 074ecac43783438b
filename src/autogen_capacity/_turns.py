"""The turns a team's run has in flight (one owner for their leases, outcomes recorded before release), and the
policy a team hands its manager."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from ._plan import MemberPlan
from .admission import record_overload, settle
from .contracts import AgentCapacity, RetryBudget
from .exceptions import CapacityError, LedgerUnavailable
from .ledger import CapacityLedger, Lease, LiveLimitChange
from .overload import OverloadSignal
from .priority import Priority
from .routing import Routing

__all__ = ["TeamPolicy", "TurnKeeper", "Verdict"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the team does after a member's turn ended in overload."""

    kind: Literal["throttled", "exhausted"]
    out_for: float
    """Seconds the member's key is out of routing (the cooldown, or the exhausted mark's time to live)."""
    given_up: bool
    """The member was overloaded on every retry its contract allows: routed around for the rest of the run."""


class TurnKeeper:
    """The one owner of a team's leases: it holds what the manager admitted until the member's turn starts, records
    each turn's outcome in the ledger *before* releasing its lease (tokens used, a cooldown, an exhausted mark),
    and releases what no turn took when a run ends, however it ends. A turn that started keeps its lease until it
    ends, even past its run (a shared runtime does not wait for, nor cancel, the handler of a cancelled run)."""

    __slots__ = (
        "_held",
        "_overloads",
        "deadline",
        "exhausted_ttl_s",
        "ledger",
        "live_changes",
        "pending_error",
        "plans",
        "rng",
    )

    def __init__(self, plans: Mapping[str, MemberPlan], exhausted_ttl_s: float, rng: random.Random | None) -> None:
        self.plans = plans
        self.exhausted_ttl_s = exhausted_ttl_s
        self.rng = rng
        self.ledger: CapacityLedger | None = None
        """The ledger of the running team (set when its runtime is built)."""
        self.deadline: float | None = None
        """When the current run must end (loop time), if anything limits it."""
        self.pending_error: CapacityError | None = None
        """A typed error to raise once the run's stream ends: ``CapacityExhausted`` (``on_exhausted="raise"``),
        or the ``LedgerUnavailable`` that ended the run (AutoGen reports it as a ``RuntimeError``)."""
        self._held: dict[str, Lease] = {}
        """Leases the manager admitted, by member, whose turns have not started."""
        self._overloads: dict[str, int] = {}
        self.live_changes: list[tuple[str, LiveLimitChange]] = []
        """Live limits the members' answers moved, for the manager to report (``take_live_changes``)."""

    def hold(self, name: str, lease: Lease) -> None:
        self._held[name] = lease

    def begin(self, name: str) -> Lease | None:
        """``name``'s turn starts: the lease admitted for it becomes the turn's, which frees it when it ends."""
        return self._held.pop(name, None)

    def take_live_changes(self) -> list[tuple[str, LiveLimitChange]]:
        """The live limits the members' answers moved since the last call, with the member that answered."""
        changes, self.live_changes = self.live_changes, []
        return changes

    def forget_run(self) -> None:
        self._overloads.clear()

    def ledger_failed(self, error: LedgerUnavailable) -> None:
        """The ledger failed mid-run: the run ends with this error (the first one), typed."""
        if self.pending_error is None:
            self.pending_error = error

    async def answered(self, name: str, lease: Lease | None, tokens: int) -> None:
        """``name``'s turn (under ``lease``) answered: debit its tokens from its key, then free its slot."""
        self._overloads.pop(name, None)
        plan = self.plans[name]
        try:
            if self.ledger is not None and plan.contract is not None and plan.team is None:
                change = await settle(lease, self.ledger, plan.key, plan.contract, tokens)
                if change is not None:
                    self.live_changes.append((name, change))
            elif lease is not None:
                await lease.release()
        except LedgerUnavailable as error:
            self.ledger_failed(error)
            raise

    async def overloaded(self, name: str, lease: Lease | None, overload: OverloadSignal) -> Verdict:
        """``name``'s turn (under ``lease``) ended in overload: cool its key down (or mark it exhausted), then free
        its slot."""
        plan = self.plans[name]
        count = self._overloads[name] = self._overloads.get(name, 0) + 1
        schedule = plan.schedule
        assert self.ledger is not None
        changes: list[LiveLimitChange] = []
        try:
            out_for = await record_overload(
                self.ledger,
                plan.key,
                overload,
                overloads=count,
                schedule=schedule,
                exhausted_ttl_s=self.exhausted_ttl_s,
                rng=self.rng,
                member=name,
                lease=lease,
                changes=changes,
            )
        except LedgerUnavailable as error:
            self.ledger_failed(error)
            raise
        finally:
            self.live_changes.extend((name, change) for change in changes)
            await self.end(lease)
        # Overloaded on every retry its contract allows: given up on for this run (a storm of short Retry-After
        # hints would loop forever), without marking its key exhausted.
        return Verdict(overload.kind, out_for, count > schedule.max_caller_retries)

    async def release(self, name: str) -> None:
        """Free the lease admitted for ``name``'s turn, which will not start."""
        lease = self._held.pop(name, None)
        if lease is not None:
            await lease.release()

    async def end(self, lease: Lease | None) -> None:
        """A turn under ``lease`` ended with nothing to record (failed or cancelled): free its slot."""
        if lease is not None:
            await lease.release()

    async def release_all(self) -> None:
        """Free every lease admitted for a turn that did not start (turns in progress free their own)."""
        leases, self._held = list(self._held.values()), {}
        await asyncio.gather(*(lease.release() for lease in leases))


@dataclass(frozen=True, slots=True, kw_only=True)
class TeamPolicy:
    """Everything capacity-related that a team hands its manager."""

    team_name: str
    plans: Mapping[str, MemberPlan]
    routing: Routing
    ledger: CapacityLedger
    turns: TurnKeeper
    on_exhausted: Literal["stop", "raise"]
    retry_budget: RetryBudget | None
    selector_capacity: AgentCapacity | None
    selector_key: str
    priority: Priority = "default"
