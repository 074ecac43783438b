"""Auditing a team's component config before deployment: the contract tree and what is wrong with it.

Pure functions over the JSON config (``ComponentModel`` dicts): nothing is instantiated, so a config whose
model clients need API keys can be audited offline. Contracts are validated with
:meth:`AgentCapacity.model_validate`, and every error names the team, the member and the field.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from autogen_core import ComponentModel
from autogen_core._component_config import WELL_KNOWN_PROVIDERS
from pydantic import ValidationError

from ._config import CapacityAwareGroupChatConfig
from .contracts import AgentCapacity, AggregateMode

__all__ = [
    "Audit",
    "FieldDerivation",
    "Finding",
    "MemberReport",
    "TeamReport",
    "UnusableConfig",
    "audit_config",
    "audit_to_dict",
    "contract_to_dict",
    "load_config_file",
]

PROVIDER = "autogen_capacity.CapacityAwareGroupChat"
_LIMITS = ("max_concurrent", "rpm", "tpm", "max_queue")
_CONTRACT_FIELDS = ("capacity", "capacities", "selector_capacity")

Level = Literal["error", "warning"]
Number = int | float | None


class UnusableConfig(ValueError):
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
    combined: Number
    """The members' values combined (sum for a pool, minimum for a pipeline)."""
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
            stack.extend(m.team for m in team.members if m.team is not None)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON component config.

    Raises:
        UnusableConfig: the file is missing or unreadable, or is not a JSON object.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UnusableConfig(f"{path}: no such file") from None
    except OSError as e:
        raise UnusableConfig(f"{path}: cannot read it ({e.strerror or e})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UnusableConfig(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    if not isinstance(data, dict):
        raise UnusableConfig(f"{path}: not a component config (a JSON object with 'provider' and 'config')")
    return data


def audit_config(config: Mapping[str, Any] | ComponentModel) -> Audit:
    """Build the contract tree of a team's component config and audit it.

    Raises:
        UnusableConfig: ``config`` is not a team's component config.
    """
    data = config.model_dump(mode="json") if isinstance(config, ComponentModel) else dict(config)
    if not _is_team(data):
        kind = data.get("component_type") or data.get("provider") or "unknown"
        raise UnusableConfig(
            f"not a team config (component_type {kind!r}): expected a team's dump_component() "
            "with 'provider' and 'config.participants'"
        )
    findings: list[Finding] = []
    team = _team(data, None, "", None, findings)
    findings.extend(_shared_key_findings(team))
    return Audit(team, tuple(findings))


# ----------------------------------------------------------------- the tree


def _is_team(data: Mapping[str, Any]) -> bool:
    inner = data.get("config")
    if not isinstance(data.get("provider"), str) or not isinstance(inner, Mapping):
        return False
    if data.get("component_type") not in (None, "team"):
        return False
    return isinstance(inner.get("participants"), list)


def _provider_findings(provider: object, where: str) -> list[Finding]:
    """An error when ``provider`` names no importable module: the config could never load.

    Only the module is looked up (its parent packages are imported, nothing of its own runs).
    """
    if not isinstance(provider, str) or not provider:
        return [Finding("error", where, "provider", "a component needs a provider (a dotted class path)")]
    path = WELL_KNOWN_PROVIDERS.get(provider, provider)
    module = path.rpartition(".")[0]
    try:
        found = bool(module) and importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if found:
        return []
    return [Finding("error", where, "provider", f"{provider!r} cannot be imported (no module {module or path!r})")]


def _name_of(component: Mapping[str, Any], fallback: str) -> str:
    inner = component.get("config")
    name = inner.get("name") if isinstance(inner, Mapping) else None
    return name if isinstance(name, str) and name else str(component.get("label") or fallback)


def _team(
    data: Mapping[str, Any], fallback_name: str | None, parent: str, timeout_s: float | None, out: list[Finding]
) -> TeamReport:
    provider: str = data["provider"]
    inner: Mapping[str, Any] = data["config"]
    capacity_aware = provider == PROVIDER or provider.endswith(".CapacityAwareGroupChat")
    name = _name_of(data, fallback_name or provider.rsplit(".", 1)[-1])
    where = f"{parent} > team {name!r}" if parent else f"team {name!r}"
    out.extend(_provider_findings(provider, where))
    timeouts = [t for t in (timeout_s, _timeout_of(inner.get("termination_condition"))) if t is not None]
    timeout = min(timeouts) if timeouts else None
    participants = [p for p in inner["participants"] if isinstance(p, Mapping)]
    names = [_name_of(p, f"participant {i}") for i, p in enumerate(participants)]

    declared: AgentCapacity | None = None
    entries: dict[str, AgentCapacity | None] = {}
    routing: str | None = None
    if capacity_aware:
        out.extend(_schema_findings(inner, where))
        declared = _contract(inner.get("capacity"), where, "capacity", out)
        _contract(inner.get("selector_capacity"), where, "selector_capacity", out)
        raw_entries = inner.get("capacities") or {}
        if not isinstance(raw_entries, Mapping):
            raw_entries = {}
        for member, raw in raw_entries.items():
            if member not in names:
                out.append(
                    Finding(
                        "error",
                        where,
                        f"capacities.{member}",
                        f"names no participant (participants: {', '.join(names) or 'none'})",
                    )
                )
                continue
            entries[member] = _contract(raw, f"{where} > member {member!r}", f"capacities.{member}", out)
        raw_routing = inner.get("routing")
        routing = (
            raw_routing if isinstance(raw_routing, str) else ("selector" if inner.get("model_client") else "headroom")
        )
    for duplicate in sorted({n for n in names if names.count(n) > 1}):
        out.append(Finding("error", where, "participants", f"participant name {duplicate!r} is used more than once"))

    members: list[MemberReport] = []
    for participant, member in zip(participants, names, strict=True):
        member_where = f"{where} > member {member!r}"
        child = _team(participant, member, where, timeout, out) if _is_team(participant) else None
        if child is None:
            out.extend(_provider_findings(participant.get("provider"), member_where))
            if participant.get("component_type") == "team":
                out.append(Finding("error", member_where, "participants", "a team config needs a participants list"))
        entry = entries.get(member)
        contract: AgentCapacity | None
        source: Literal["capacities", "nested team", "none"]
        if entry is not None:
            contract, source = entry, "capacities"
            if child is not None and child.effective is not None:
                out.extend(_oversupply(entry, child.effective, member_where, f"capacities.{member}", "the nested team"))
        elif child is not None and child.capacity_aware and child.effective is not None:
            contract, source = child.effective, "nested team"
        else:
            contract, source = None, "none"
        if entry is not None:
            key = entry.key or member
        elif child is not None and child.capacity_aware:
            key = child.key  # a nested capacity-aware team leases its own key and its members'
        else:
            key = member
        members.append(MemberReport(member, str(participant.get("provider", "?")), key, contract, source, child))

    mode: AggregateMode | None = None
    effective: AgentCapacity | None = None
    derivation: tuple[FieldDerivation, ...] = ()
    if capacity_aware:
        mode = "pipeline" if routing == "round_robin" else "pool"
        contracts = [m.contract for m in members]
        effective = AgentCapacity.aggregate(contracts, mode, cap=declared)
        uncapped = AgentCapacity.aggregate(contracts, mode)
        derivation = tuple(
            FieldDerivation(
                limit,
                {m.name: getattr(m.contract, limit) if m.contract is not None else None for m in members},
                getattr(uncapped, limit) if uncapped is not None else None,
                getattr(declared, limit) if declared is not None else None,
                getattr(effective, limit) if effective is not None else None,
            )
            for limit in _LIMITS
        )
        if declared is not None and uncapped is not None:
            out.extend(_oversupply(declared, uncapped, where, "capacity", f"its members ({mode})"))
        if declared is not None or entries:
            for m in members:
                if m.contract is None:
                    out.append(
                        Finding(
                            "warning",
                            f"{where} > member {m.name!r}",
                            f"capacities.{m.name}",
                            "has no contract in a team that declares contracts: it is never deferred, and "
                            f"counts as unbounded in the team's {mode} aggregate",
                        )
                    )
        if timeout is not None:
            out.extend(_timeout_findings(where, declared, members, timeout))
    key = declared.key if declared is not None and declared.key else name
    return TeamReport(
        name, provider, capacity_aware, routing, mode, key, declared, effective, derivation, timeout, tuple(members)
    )


def _contract(raw: Any, where: str, field_name: str, out: list[Finding]) -> AgentCapacity | None:
    if raw is None:
        return None
    try:
        return AgentCapacity.model_validate(raw)
    except ValidationError as e:
        for error in e.errors():
            loc = ".".join(str(part) for part in error["loc"])
            out.append(Finding("error", where, f"{field_name}.{loc}" if loc else field_name, _message(error)))
        return None


def _message(error: Mapping[str, Any]) -> str:
    message = str(error["msg"]).removeprefix("Value error, ")
    if error.get("type") == "extra_forbidden":
        return "is not a contract field"
    if "input" in error and error.get("type") != "model_type":
        return f"{message} (got {error['input']!r})"
    return message


def _schema_findings(inner: Mapping[str, Any], where: str) -> list[Finding]:
    """Fields of the team config other than the contracts (unknown keys, bad routing and the like)."""
    rest = {k: v for k, v in inner.items() if k not in _CONTRACT_FIELDS}
    try:
        CapacityAwareGroupChatConfig.model_validate(rest)
    except ValidationError as e:
        return [
            Finding("error", where, ".".join(str(p) for p in error["loc"]) or None, _message(error))
            for error in e.errors()
        ]
    return []


def _timeout_of(condition: Any) -> float | None:
    """The shortest ``TimeoutTermination`` in a termination condition (through And/Or combinations)."""
    if not isinstance(condition, Mapping):
        return None
    inner = condition.get("config")
    if not isinstance(inner, Mapping):
        return None
    found: list[float] = []
    if str(condition.get("provider", "")).endswith("TimeoutTermination"):
        seconds = inner.get("timeout_seconds")
        if isinstance(seconds, int | float) and not isinstance(seconds, bool):
            found.append(float(seconds))
    for nested in inner.get("conditions") or []:
        seconds = _timeout_of(nested)
        if seconds is not None:
            found.append(seconds)
    return min(found) if found else None


# ----------------------------------------------------------------- findings


def _oversupply(
    declared: AgentCapacity, supply: AgentCapacity, where: str, field_name: str, what: str
) -> list[Finding]:
    out = []
    for limit in ("max_concurrent", "rpm", "tpm"):
        promised, available = getattr(declared, limit), getattr(supply, limit)
        if available is not None and promised is not None and promised > available:
            out.append(
                Finding(
                    "warning",
                    where,
                    f"{field_name}.{limit}",
                    f"declares {limit}={_num(promised)} but {what} can supply at most {_num(available)}",
                )
            )
    return out


def _timeout_findings(
    where: str, declared: AgentCapacity | None, members: list[MemberReport], timeout: float
) -> list[Finding]:
    out = []
    subjects: list[tuple[str, str, AgentCapacity]] = []
    if declared is not None:
        subjects.append((where, "capacity", declared))
    subjects += [
        (f"{where} > member {m.name!r}", f"capacities.{m.name}", m.contract)
        for m in members
        if m.contract is not None and m.source == "capacities"
    ]
    for subject, field_name, contract in subjects:
        total = sum(contract.backoff_schedule())
        if total > timeout:
            out.append(
                Finding(
                    "warning",
                    subject,
                    f"{field_name}.max_caller_retries",
                    f"{contract.max_caller_retries} retries wait up to {_num(total)}s (sum of the backoff schedule), "
                    f"longer than TimeoutTermination(timeout_seconds={_num(timeout)}): the run times out before "
                    "the contract gives up",
                )
            )
    return out


def _shared_key_findings(root: TeamReport) -> list[Finding]:
    """Contracts sharing a ledger key must agree: the ledger enforces whichever one a caller passes."""
    by_key: dict[str, list[tuple[str, AgentCapacity]]] = {}
    stack: list[tuple[TeamReport, str]] = [(root, f"team {root.name!r}")]
    while stack:
        team, where = stack.pop(0)
        if team.declared is not None:
            by_key.setdefault(team.key, []).append((where, team.declared))
        for m in team.members:
            if m.source == "capacities" and m.contract is not None:
                by_key.setdefault(m.key, []).append((f"{where} > member {m.name!r}", m.contract))
            if m.team is not None:
                stack.append((m.team, f"{where} > team {m.team.name!r}"))
    out = []
    for key, holders in by_key.items():
        distinct = {_comparable(c) for _, c in holders}
        if len(distinct) > 1:
            names = ", ".join(w for w, _ in holders)
            out.append(
                Finding(
                    "warning",
                    holders[0][0],
                    None,
                    f"shares ledger key {key!r} with different contracts ({names}): the limit enforced depends "
                    "on who asks",
                )
            )
    return out


def _comparable(contract: AgentCapacity) -> str:
    return contract.model_dump_json(exclude={"key"})


def _num(value: float) -> str:
    return f"{value:g}"


# ----------------------------------------------------------------- JSON


def contract_to_dict(contract: AgentCapacity | None) -> dict[str, Any] | None:
    """A contract's fields plus its un-jittered ``backoff_schedule_s``."""
    if contract is None:
        return None
    return {**contract.model_dump(mode="json"), "backoff_schedule_s": list(contract.backoff_schedule())}


def _team_to_dict(team: TeamReport) -> dict[str, Any]:
    return {
        "name": team.name,
        "provider": team.provider,
        "capacity_aware": team.capacity_aware,
        "routing": team.routing,
        "mode": team.mode,
        "key": team.key,
        "declared": contract_to_dict(team.declared),
        "effective": contract_to_dict(team.effective),
        "derivation": [
            {
                "field": d.field,
                "members": dict(d.members),
                "combined": d.combined,
                "declared": d.declared,
                "effective": d.effective,
            }
            for d in team.derivation
        ],
        "timeout_s": team.timeout_s,
        "members": [
            {
                "name": m.name,
                "provider": m.provider,
                "key": m.key,
                "source": m.source,
                "contract": contract_to_dict(m.contract),
                "team": _team_to_dict(m.team) if m.team is not None else None,
            }
            for m in team.members
        ],
    }


def audit_to_dict(audit: Audit) -> dict[str, Any]:
    """The audit as JSON-ready data: ``{"team": {...}, "findings": [...]}``."""
    return {
        "team": _team_to_dict(audit.team),
        "findings": [
            {"level": f.level, "where": f.where, "field": f.field, "message": f.message} for f in audit.findings
        ],
    }
