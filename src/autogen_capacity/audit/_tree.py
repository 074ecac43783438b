"""Building the contract tree of a team's config, validating every contract on the way."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from autogen_core import ComponentModel
from pydantic import ValidationError

from .._plan import aggregate_mode, default_routing
from ..contracts import AgentCapacity, AggregateMode
from ._model import (
    CONTRACT_FIELDS,
    LIMITS,
    PROVIDER,
    Audit,
    FieldDerivation,
    Finding,
    MemberReport,
    TeamReport,
    UnusableConfig,
)
from ._rules import (
    backend_groups,
    component_type_findings,
    derive,
    ledger_findings,
    oversupply,
    provider_findings,
    shared_key_findings,
    timeout_findings,
    uncontracted,
)
from ._validate import did_you_mean, message, schema_findings, timeout_of, validate_contract

MAX_NESTING = 100
"""Teams nested deeper than this cannot be loaded by AutoGen (its loader recurses about 10 frames a level)."""


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON component config.

    Raises:
        UnusableConfig: the file is missing or unreadable, or is not a JSON object.
    """
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise UnusableConfig(f"{path}: no such file") from None
    except OSError as e:
        raise UnusableConfig(f"{path}: cannot read it ({e.strerror or e})") from None
    return parse_config(raw, str(path))


def parse_config(raw: bytes, source: str) -> dict[str, Any]:
    """Parse a JSON component config read from ``source`` (a path, or ``-`` for stdin).

    Raises:
        UnusableConfig: not UTF-8, not JSON, nested too deeply, or not a JSON object.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        byte = raw[e.start : e.start + 1].hex()
        raise UnusableConfig(f"{source}: not UTF-8 text (byte 0x{byte} at position {e.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UnusableConfig(f"{source}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except RecursionError:
        raise UnusableConfig(f"{source}: nested too deeply to read as JSON") from None
    if not isinstance(data, dict):
        raise UnusableConfig(f"{source}: not a component config (a JSON object with 'provider' and 'config')")
    return data


def audit_config(config: Mapping[str, Any] | ComponentModel) -> Audit:
    """Build the contract tree of a team's component config and audit it.

    Raises:
        UnusableConfig: ``config`` is not a team's component config, or its teams nest too deeply.
    """
    data = config.model_dump(mode="json") if isinstance(config, ComponentModel) else dict(config)
    if not _is_team(data):
        kind = data.get("component_type") or data.get("provider") or "unknown"
        raise UnusableConfig(
            f"not a team config (component_type {kind!r}): expected a team's dump_component() "
            "with 'provider' and 'config.participants'"
        )
    findings: list[Finding] = []
    team = _Walk(findings).team(data, None, "", None, 0)
    findings.extend(shared_key_findings(team))
    return Audit(team, tuple(findings))


def _looks_like_team(data: object) -> bool:
    """A component with a participants list, whatever its ``component_type`` says."""
    if not isinstance(data, Mapping):
        return False
    inner = data.get("config")
    return (
        isinstance(data.get("provider"), str)
        and isinstance(inner, Mapping)
        and isinstance(inner.get("participants"), list)
    )


def _is_team(data: Mapping[str, Any]) -> bool:
    return _looks_like_team(data) and data.get("component_type") in (None, "team")


def _is_component(data: object) -> bool:
    return isinstance(data, Mapping) and "provider" in data and isinstance(data.get("config"), Mapping)


def _name_of(component: Mapping[str, Any], fallback: str) -> str:
    inner = component.get("config")
    name = inner.get("name") if isinstance(inner, Mapping) else None
    return name if isinstance(name, str) and name else str(component.get("label") or fallback)


class _Walk:
    """One pass over a config, collecting findings in ``out``."""

    def __init__(self, out: list[Finding]) -> None:
        self.out = out

    def team(
        self, data: Mapping[str, Any], fallback_name: str | None, parent: str, timeout_s: float | None, depth: int
    ) -> TeamReport:
        if depth > MAX_NESTING:
            raise UnusableConfig(f"nested too deeply: teams more than {MAX_NESTING} levels deep cannot be loaded")
        provider: str = data["provider"]
        inner: Mapping[str, Any] = data["config"]
        capacity_aware = provider == PROVIDER or provider.endswith(".CapacityAwareGroupChat")
        name = _name_of(data, fallback_name or provider.rsplit(".", 1)[-1])
        where = f"{parent} > team {name!r}" if parent else f"team {name!r}"
        self.out.extend(provider_findings(provider, where))
        skip = {"participants", *CONTRACT_FIELDS}
        self.components({k: v for k, v in inner.items() if k not in skip}, where, "", depth, timeout_s)
        timeouts = [t for t in (timeout_s, timeout_of(inner.get("termination_condition"))) if t is not None]
        timeout = min(timeouts) if timeouts else None
        participants = self.participants(inner["participants"], where)
        names = [_name_of(p, f"participant {i}") for i, p in participants]

        declared: AgentCapacity | None = None
        entries: dict[str, AgentCapacity | None] = {}
        routing: str | None = None
        if capacity_aware:
            declared, entries = self.contracts(inner, names, where)
            self.out.extend(ledger_findings(inner.get("ledger"), where))
            raw_routing = inner.get("routing")
            routing = raw_routing if isinstance(raw_routing, str) else default_routing(bool(inner.get("model_client")))
        for duplicate in sorted({n for n in names if names.count(n) > 1}):
            self.out.append(
                Finding("error", where, "participants", f"participant name {duplicate!r} is used more than once")
            )
        selector = provider.endswith("SelectorGroupChat")
        members = [
            self.member(p, i, n, where, timeout, entries, depth, selector)
            for (i, p), n in zip(participants, names, strict=True)
        ]
        return self.summary(name, provider, capacity_aware, routing, declared, entries, members, where, timeout)

    def participants(self, raw: list[Any], where: str) -> list[tuple[int, Mapping[str, Any]]]:
        """The participants that are components; an error for each one that is not."""
        out = []
        for i, participant in enumerate(raw):
            try:
                ComponentModel.model_validate(participant)
            except ValidationError as e:
                detail = "; ".join(message(error) for error in e.errors()[:2])
                self.out.append(Finding("error", where, f"participants.{i}", f"is not a component config ({detail})"))
                continue
            out.append((i, participant))
        return out

    def contracts(
        self, inner: Mapping[str, Any], names: list[str], where: str
    ) -> tuple[AgentCapacity | None, dict[str, AgentCapacity | None]]:
        """The team's declared contract and its members' entries, each validated."""
        self.out.extend(schema_findings(inner, where))
        declared = validate_contract(inner.get("capacity"), where, "capacity", self.out)
        validate_contract(inner.get("selector_capacity"), where, "selector_capacity", self.out)
        raw_entries = inner.get("capacities")
        if raw_entries is None:
            raw_entries = {}
        if not isinstance(raw_entries, Mapping):
            self.out.append(
                Finding(
                    "error",
                    where,
                    "capacities",
                    f"must map participant names to contracts (got {raw_entries!r})",
                )
            )
            raw_entries = {}
        entries: dict[str, AgentCapacity | None] = {}
        for member, raw in raw_entries.items():
            if member not in names:
                out_of = ", ".join(names) or "none"
                hint = did_you_mean(str(member), names)
                self.out.append(
                    Finding(
                        "error", where, f"capacities.{member}", f"names no participant (participants: {out_of}){hint}"
                    )
                )
                continue
            entries[member] = validate_contract(raw, f"{where} > member {member!r}", f"capacities.{member}", self.out)
        return declared, entries

    def member(
        self,
        participant: Mapping[str, Any],
        index: int,
        member: str,
        where: str,
        timeout: float | None,
        entries: Mapping[str, AgentCapacity | None],
        depth: int,
        selector: bool,
    ) -> MemberReport:
        member_where = f"{where} > member {member!r}"
        is_team = _looks_like_team(participant)
        self.out.extend(component_type_findings(participant, is_team, selector, member_where, index))
        child = self.team(participant, member, where, timeout, depth + 1) if is_team else None
        wrapped: list[TeamReport] = []
        if child is None:
            self.out.extend(provider_findings(participant.get("provider"), member_where))
            wrapped = self.components(participant["config"], member_where, "", depth, timeout)
        entry = entries.get(member)
        contract: AgentCapacity | None
        source: Literal["capacities", "nested team", "none"]
        if entry is not None:
            contract, source = entry, "capacities"
            if child is not None and child.effective is not None:
                self.out.extend(
                    oversupply(entry, child.effective, member_where, f"capacities.{member}", "the nested team")
                )
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
        provider = str(participant.get("provider", "?"))
        return MemberReport(member, provider, key, contract, source, child, tuple(wrapped))

    def components(self, value: object, where: str, path: str, depth: int, timeout: float | None) -> list[TeamReport]:
        """Check every component inside ``value`` (model clients, tools, conditions) for a loadable
        provider; audit the teams found there (a SocietyOfMindAgent's team) and return them."""
        if _looks_like_team(value):
            assert isinstance(value, Mapping)
            return [self.team(value, path.rsplit(".", 1)[-1] or None, where, timeout, depth + 1)]
        teams: list[TeamReport] = []
        if isinstance(value, Mapping):
            if _is_component(value):
                field = f"{path}.provider" if path else "provider"
                self.out.extend(provider_findings(value.get("provider"), where, field))
            for key, item in value.items():
                teams += self.components(item, where, f"{path}.{key}" if path else str(key), depth, timeout)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                teams += self.components(item, where, f"{path}.{i}", depth, timeout)
        return teams

    def summary(
        self,
        name: str,
        provider: str,
        capacity_aware: bool,
        routing: str | None,
        declared: AgentCapacity | None,
        entries: Mapping[str, AgentCapacity | None],
        members: list[MemberReport],
        where: str,
        timeout: float | None,
    ) -> TeamReport:
        """The team's aggregate, its derivation and the warnings about it."""
        mode: AggregateMode | None = None
        effective: AgentCapacity | None = None
        derivation: tuple[FieldDerivation, ...] = ()
        groups: dict[str, tuple[str, ...]] = {}
        if capacity_aware:
            mode = aggregate_mode(routing or "")
            contracts = [m.contract for m in members]
            effective = AgentCapacity.aggregate(contracts, mode, cap=declared)
            uncapped = AgentCapacity.aggregate(contracts, mode)
            groups = backend_groups(members)
            derivation = tuple(derive(limit, members, groups, uncapped, declared, effective) for limit in LIMITS)
            if declared is not None and uncapped is not None:
                self.out.extend(oversupply(declared, uncapped, where, "capacity", f"its members ({mode})"))
            if declared is not None or entries:
                self.out.extend(uncontracted(members, where, mode))
            if timeout is not None:
                self.out.extend(timeout_findings(where, declared, members, timeout))
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
