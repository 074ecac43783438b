"""Building the contract tree of a team's config, validating every contract on the way."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from autogen_core import ComponentModel
from pydantic import ValidationError

from .._config import CapacityAwareGroupChatConfig
from ..contracts import AgentCapacity, AggregateMode, backends
from ._model import (
    CONTRACT_FIELDS,
    LIMITS,
    PROVIDER,
    Audit,
    FieldDerivation,
    Finding,
    MemberReport,
    Number,
    TeamReport,
    UnusableConfig,
)
from ._rules import oversupply, provider_findings, shared_key_findings, timeout_findings


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
    findings.extend(shared_key_findings(team))
    return Audit(team, tuple(findings))


def _is_team(data: Mapping[str, Any]) -> bool:
    inner = data.get("config")
    if not isinstance(data.get("provider"), str) or not isinstance(inner, Mapping):
        return False
    if data.get("component_type") not in (None, "team"):
        return False
    return isinstance(inner.get("participants"), list)


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
    out.extend(provider_findings(provider, where))
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
            out.extend(provider_findings(participant.get("provider"), member_where))
            if participant.get("component_type") == "team":
                out.append(Finding("error", member_where, "participants", "a team config needs a participants list"))
        entry = entries.get(member)
        contract: AgentCapacity | None
        source: Literal["capacities", "nested team", "none"]
        if entry is not None:
            contract, source = entry, "capacities"
            if child is not None and child.effective is not None:
                out.extend(oversupply(entry, child.effective, member_where, f"capacities.{member}", "the nested team"))
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
    groups: dict[str, tuple[str, ...]] = {}
    if capacity_aware:
        mode = "pipeline" if routing == "round_robin" else "pool"
        contracts = [m.contract for m in members]
        effective = AgentCapacity.aggregate(contracts, mode, cap=declared)
        uncapped = AgentCapacity.aggregate(contracts, mode)
        groups = _backend_groups(members)
        derivation = tuple(_derivation(limit, members, groups, uncapped, declared, effective) for limit in LIMITS)
        if declared is not None and uncapped is not None:
            out.extend(oversupply(declared, uncapped, where, "capacity", f"its members ({mode})"))
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
            out.extend(timeout_findings(where, declared, members, timeout))
    key = declared.key if declared is not None and declared.key else name
    return TeamReport(
        name,
        provider,
        capacity_aware,
        routing,
        mode,
        key,
        declared,
        effective,
        derivation,
        groups,
        timeout,
        tuple(members),
    )


def _backend_groups(members: list[MemberReport]) -> dict[str, tuple[str, ...]]:
    """Members grouped as :meth:`AgentCapacity.aggregate` counts them: one backend per shared key."""
    groups: dict[str, tuple[str, ...]] = {}
    for positions in backends([m.contract for m in members]):
        first = members[positions[0]]
        label = first.contract.key if first.contract is not None and first.contract.key else first.name
        groups[label] = tuple(members[i].name for i in positions)
    return groups


def _derivation(
    limit: str,
    members: list[MemberReport],
    groups: Mapping[str, tuple[str, ...]],
    uncapped: AgentCapacity | None,
    declared: AgentCapacity | None,
    effective: AgentCapacity | None,
) -> FieldDerivation:
    values = {m.name: getattr(m.contract, limit) if m.contract is not None else None for m in members}
    per_key: dict[str, Number] = {}
    for label, names in groups.items():
        bounded = [v for v in (values[n] for n in names) if v is not None]
        per_key[label] = min(bounded) if bounded else None
    return FieldDerivation(
        limit,
        values,
        per_key,
        getattr(uncapped, limit) if uncapped is not None else None,
        getattr(declared, limit) if declared is not None else None,
        getattr(effective, limit) if effective is not None else None,
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
    rest = {k: v for k, v in inner.items() if k not in CONTRACT_FIELDS}
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
