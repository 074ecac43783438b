"""What a team knows about each participant's contract, the leases a run holds, and the policy it hands its
manager."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from .contracts import AgentCapacity, RetryBudget
from .exceptions import CapacityExhausted
from .ledger import CapacityLedger, KeyStatus, Lease
from .routing import Routing

__all__ = ["IDLE", "UNBOUNDED", "CapacityAwareTeam", "MemberPlan", "RunLeases", "TeamPolicy"]

UNBOUNDED = AgentCapacity()
"""The contract of a member that declares none: no limits, the default backoff schedule."""

IDLE = KeyStatus(1.0)


class CapacityAwareTeam(Protocol):
    """A nested team that enforces its own contract; its parent ranks it by live headroom, never leases it."""

    async def capacity_status(self) -> KeyStatus: ...

    def capacity_keys(self) -> Mapping[str, AgentCapacity]: ...


@dataclass(frozen=True, slots=True)
class MemberPlan:
    """How a team treats one participant."""

    name: str
    key: str
    contract: AgentCapacity | None
    """The effective contract (the ``capacities`` entry, else the participant's ``capacity`` attribute)."""
    team: CapacityAwareTeam | None = None
    """Set for a nested capacity-aware team that declares its own contract (it leases itself)."""

    @property
    def leased(self) -> bool:
        """Whether the team takes a lease on this member's key for each of its turns."""
        return self.contract is not None and self.team is None

    @property
    def schedule(self) -> AgentCapacity:
        """The contract whose backoff the team follows when waiting for this member."""
        return self.contract or UNBOUNDED


@dataclass(slots=True)
class RunLeases:
    """The leases a team's run holds, owned at team level so that whatever is left is released when the
    run ends, however it ends (the runtime never cancels a turn's task: a dead turn cannot release)."""

    held: dict[str, Lease] = field(default_factory=dict)
    pending_error: CapacityExhausted | None = None

    def hold(self, name: str, lease: Lease) -> None:
        self.held[name] = lease

    async def release(self, name: str) -> None:
        lease = self.held.pop(name, None)
        if lease is not None:
            await lease.release()

    async def release_all(self) -> None:
        leases, self.held = list(self.held.values()), {}
        await asyncio.gather(*(lease.release() for lease in leases))


class TeamPolicy:
    """Everything capacity-related that a team hands its manager."""

    __slots__ = (
        "exhausted_ttl_s",
        "leases",
        "ledger",
        "on_exhausted",
        "plans",
        "retry_budget",
        "routing",
        "selector_capacity",
        "selector_key",
        "team_name",
    )

    def __init__(
        self,
        *,
        team_name: str,
        plans: Mapping[str, MemberPlan],
        routing: Routing,
        ledger: CapacityLedger,
        leases: RunLeases,
        on_exhausted: Literal["stop", "raise"],
        retry_budget: RetryBudget | None,
        selector_capacity: AgentCapacity | None,
        selector_key: str,
        exhausted_ttl_s: float,
    ) -> None:
        self.team_name = team_name
        self.plans = plans
        self.routing = routing
        self.ledger = ledger
        self.leases = leases
        self.on_exhausted = on_exhausted
        self.retry_budget = retry_budget
        self.selector_capacity = selector_capacity
        self.selector_key = selector_key
        self.exhausted_ttl_s = exhausted_ttl_s
