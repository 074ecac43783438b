"""Planning a team: the rules the running team and the config audit share, so that they agree by construction.

Which routing a team uses when none is named, how its members' contracts aggregate (a pool or a pipeline), how
long an exhausted member is routed around, and how each participant is treated (its key, its contract, whether
it is a nested capacity-aware team). Pure: no I/O, no AutoGen runtime.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ._engine import Candidate
from .contracts import AgentCapacity, AggregateMode, declared_contract, ledger_key
from .exceptions import CapacityConfigWarning, ConfigError, ContractError
from .ledger import CapacityLedger, KeyStatus
from .routing import Routing

__all__ = [
    "DEFAULT_EXHAUSTED_TTL_S",
    "UNBOUNDED",
    "CapacityAwareTeam",
    "MemberPlan",
    "aggregate_mode",
    "default_routing",
    "plan_members",
    "resolve_routing",
    "team_status",
]

UNBOUNDED = AgentCapacity()
"""The contract of a member that declares none: no limits, the default backoff schedule."""

DEFAULT_EXHAUSTED_TTL_S = 300.0
"""How long a member whose entitlement is exhausted stays out of routing for every team on the ledger."""


@runtime_checkable
class CapacityAwareTeam(Protocol):
    """A nested team that enforces its own contract. Its parent ranks it by live headroom and, when it declares
    a contract, takes the one lease on its key for it (the team runs under that lease instead of its own)."""

    @property
    def key(self) -> str: ...

    @property
    def declared_capacity(self) -> AgentCapacity | None: ...

    @property
    def capacity(self) -> AgentCapacity | None: ...

    async def capacity_status(self) -> KeyStatus: ...


@dataclass(frozen=True, slots=True)
class MemberPlan:
    """How a team treats one participant."""

    name: str
    key: str
    contract: AgentCapacity | None
    """The effective contract (the ``capacities`` entry, else the participant's ``capacity`` attribute)."""
    team: CapacityAwareTeam | None = None
    """Set for a nested capacity-aware team that enforces its own contract (and its members')."""

    def candidate(self, *, cooled: bool = False) -> Candidate:
        """How the admission engine sees this member (``cooled``: it was cooled down during the run).

        A nested team that declares a contract is gated by its own key, whose one lease the parent takes for
        it; its members only set its headroom (it waits for them itself, by its own contract).
        """
        if self.team is not None:
            own = self.team.declared_capacity
            if own is not None:
                return Candidate(self.name, self.team.key, own, probe=self.team.capacity_status)
            return Candidate(self.name, self.key, UNBOUNDED, leased=False, probe=self.team.capacity_status)
        if self.contract is None:
            return Candidate(self.name, self.key, UNBOUNDED, leased=False, checked=cooled)
        return Candidate(self.name, self.key, self.contract)

    @property
    def schedule(self) -> AgentCapacity:
        """The contract whose backoff the team follows when waiting for this member."""
        return self.contract or UNBOUNDED


def default_routing(has_model_client: bool) -> Routing:
    """The routing of a team that names none: ``selector`` with a model client, else ``headroom``."""
    return "selector" if has_model_client else "headroom"


def resolve_routing(routing: Routing | None, *, has_model_client: bool) -> Routing:
    """The team's routing: the one named, else :func:`default_routing`.

    Raises:
        ConfigError: selector routing without a model client, or a model client with another routing.
    """
    resolved = routing or default_routing(has_model_client)
    if resolved == "selector" and not has_model_client:
        raise ConfigError("routing='selector' needs a model_client to pick speakers.")
    if resolved != "selector" and has_model_client:
        raise ConfigError(f"a model_client is only used with routing='selector', not routing={resolved!r}.")
    return resolved


def aggregate_mode(routing: Routing | str) -> AggregateMode:
    """How a team's members' contracts add up: a ``pipeline`` (round robin: every member speaks in turn, the
    slowest bounds the team) or a ``pool`` (any one member serves a turn)."""
    return "pipeline" if routing == "round_robin" else "pool"


def plan_members(
    team_name: str, participants: Sequence[object], capacities: Mapping[str, AgentCapacity]
) -> dict[str, MemberPlan]:
    """How the team treats each participant: the ``capacities`` entry wins over a participant's own ``capacity``;
    a nested capacity-aware team enforces its own contract (and its members') unless an entry leases it.

    Raises:
        ContractError: ``capacities`` names no participant.
    """
    names = [getattr(p, "name", "") for p in participants]
    unknown = sorted(set(capacities) - set(names))
    if unknown:
        raise ContractError(
            f"capacities names no participant of team {team_name!r}: {', '.join(map(repr, unknown))} "
            f"(participants: {', '.join(map(repr, names))})"
        )
    plans: dict[str, MemberPlan] = {}
    for name, participant in zip(names, participants, strict=True):
        entry = capacities.get(name)
        if isinstance(participant, CapacityAwareTeam):
            # A nested capacity-aware team leases its own members (and itself, when it declares a contract): the
            # parent ranks it by live headroom and leases it like an agent only for an entry of its own.
            self_leasing = participant.declared_capacity is not None or entry is None
            contract = entry or participant.capacity
            plans[name] = MemberPlan(name, ledger_key(entry, name), contract, participant if self_leasing else None)
        else:
            if entry is None:
                _warn_about_capacity_attribute(name, participant)
            contract = entry or declared_contract(participant)
            plans[name] = MemberPlan(name, ledger_key(contract, name), contract)
    return plans


def _warn_about_capacity_attribute(name: str, participant: object) -> None:
    """A ``capacity`` attribute that is no contract would be ignored: say so rather than ignore it silently."""
    own = getattr(participant, "capacity", None)
    if own is not None and not isinstance(own, AgentCapacity):
        warnings.warn(
            f"participant {name!r} has a capacity attribute of type {type(own).__name__}, not an "
            f"AgentCapacity: it is ignored. Declare the contract in the team's "
            f"capacities={{{name!r}: AgentCapacity(...)}} instead.",
            CapacityConfigWarning,
            stacklevel=4,  # this function, plan_members, the team's __init__, the caller
        )


async def team_status(
    ledger: CapacityLedger,
    key: str,
    declared: AgentCapacity | None,
    plans: Mapping[str, MemberPlan],
    routing: Routing,
) -> KeyStatus:
    """A capacity-aware team's live status as a participant of a parent team: its own key's (a parent waits for
    that key and takes its one lease), with the headroom capped by its members' (the best member for a pool, the
    worst for a pipeline). Saturated members lower the headroom but do not block: the team waits for them
    itself, by its own contract."""
    own = await ledger.status(key, declared) if declared is not None else KeyStatus(1.0)
    if own.blocked_by is not None:
        return own
    contracted = [p for p in plans.values() if p.contract is not None]
    if not contracted or (len(contracted) < len(plans) and aggregate_mode(routing) == "pool"):
        return own
    found = await ledger.statuses({p.key: p.contract for p in contracted if p.contract is not None})
    pick = min if aggregate_mode(routing) == "pipeline" else max
    return KeyStatus(min(pick(status.headroom for status in found.values()), own.headroom))
