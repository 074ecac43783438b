"""The audit's data: findings, the contract tree of a team, and how its effective contract was derived."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

from ..contracts import AgentCapacity, AggregateMode
from ..exceptions import ConfigError

PROVIDER = "autogen_capacity.CapacityAwareGroupChat"

LIMITS = ("max_concurrent", "rpm", "tpm", "max_queue")

CONTRACT_FIELDS = ("capacity", "capacities", "selector_capacity")

Level = Literal["error", "warning"]

Number = int | float | None


class UnusableConfig(ConfigError):
    """The file cannot be audited at all: missing, not JSON, or not a team's component config."""


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem in the config."""

    level: Level
    """``error`` (the team would refuse the config or misbehave) or ``warning`` (legal but suspicious)."""
    where: str
    """The team and member it concerns, as ``team 'a' > member 'b'``."""
    field: str | None
    """The config field it concerns (``capacities.b.max_concurrent``), when one does."""
    message: str

    def __str__(self) -> str:
        at = f" [{self.field}]" if self.field else ""
        return f"{self.where}{at}: {self.message}"


@dataclass(frozen=True, slots=True)
class FieldDerivation:
    """How one limit of a team's effective contract was derived."""

    field: str
    members: Mapping[str, Number]
    """Each member's value (``None``: unbounded)."""
    keys: Mapping[str, Number]
    """Each backend's value, counted once however many members share its key (see ``TeamReport.backends``)."""
    combined: Number
    """The backends' values combined (sum for a pool, minimum for a pipeline)."""
    declared: Number
    """The team's declared value, which caps ``combined``."""
    effective: Number


@dataclass(frozen=True, slots=True)
class MemberReport:
    """One participant of a team, and its contract."""

    name: str
    provider: str
    key: str
    """The ledger key its turns are counted under."""
    contract: AgentCapacity | None
    source: Literal["capacities", "nested team", "none"]
    """Where the contract comes from: the team's ``capacities`` entry, the nested team's aggregate, or nowhere."""
    team: TeamReport | None = None
    """Set when the participant is itself a team."""
    wrapped: tuple[TeamReport, ...] = ()
    """Teams inside the participant's own config (a SocietyOfMindAgent's team): audited, never leased by
    this team."""


@dataclass(frozen=True, slots=True)
class TeamReport:
    """A team, its members and its effective aggregate contract."""

    name: str
    provider: str
    capacity_aware: bool
    """Whether the team is a :class:`~autogen_capacity.CapacityAwareGroupChat` (plain AutoGen teams enforce
    no contract; capacity-aware teams nested in them still enforce their own)."""
    routing: str | None
    mode: AggregateMode | None
    key: str
    """The team's own ledger key: ``capacity.key`` or its name."""
    declared: AgentCapacity | None
    effective: AgentCapacity | None
    derivation: tuple[FieldDerivation, ...]
    backends: Mapping[str, tuple[str, ...]]
    """The members counted as one backend, by the contract ``key`` they share (else by member name)."""
    timeout_s: float | None
    """The shortest ``TimeoutTermination`` bounding this team's runs (its own or an enclosing team's)."""
    members: tuple[MemberReport, ...]


@dataclass(frozen=True, slots=True)
class Audit:
    """The contract tree of a config and its findings."""

    team: TeamReport
    findings: tuple[Finding, ...]

    @property
    def errors(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.level == "error")

    @property
    def warnings(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.level == "warning")

    def teams(self) -> Iterator[TeamReport]:
        """Every team in the tree, outermost first."""
        stack = [self.team]
        while stack:
            team = stack.pop(0)
            yield team
            for m in team.members:
                stack.extend([m.team] if m.team is not None else [])
                stack.extend(m.wrapped)
