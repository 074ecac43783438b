"""The audit's checks beyond validation: unloadable providers, oversupply, retries against timeouts, shared keys."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from ..contracts import AgentCapacity, AggregateMode, backends
from ..ledger.config import LedgerConfig
from ._model import FieldDerivation, Finding, MemberReport, Number, TeamReport
from ._providers import provider_problem


def provider_findings(provider: object, where: str, field: str = "provider") -> list[Finding]:
    """An error when ``provider`` names no class that exists: the config could never load.

    No provider code runs: see :mod:`._providers`.
    """
    problem = provider_problem(provider)
    return [] if problem is None else [Finding("error", where, field, problem)]


def ledger_findings(raw: object, where: str) -> list[Finding]:
    """A warning when a Redis ledger's URL variable is unset here: the team would not load without it."""
    try:
        config = LedgerConfig.model_validate(raw) if raw is not None else None
    except ValidationError:
        return []  # reported by the team's schema check
    if config is None or config.provider != "redis" or config.url_env is None:
        return []
    if os.environ.get(config.url_env, "").strip():
        return []
    return [
        Finding(
            "warning",
            where,
            "ledger.url_env",
            f"the environment variable {config.url_env} is not set here: Team.load_component fails "
            "wherever it is unset (set it to the Redis URL, e.g. redis://localhost:6379/0)",
        )
    ]


def oversupply(declared: AgentCapacity, supply: AgentCapacity, where: str, field_name: str, what: str) -> list[Finding]:
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


def timeout_findings(
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


def shared_key_findings(root: TeamReport) -> list[Finding]:
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


def uncontracted(members: list[MemberReport], where: str, mode: AggregateMode) -> list[Finding]:
    return [
        Finding(
            "warning",
            f"{where} > member {m.name!r}",
            f"capacities.{m.name}",
            "has no contract in a team that declares contracts: it is never deferred, and "
            f"counts as unbounded in the team's {mode} aggregate",
        )
        for m in members
        if m.contract is None
    ]


def component_type_findings(
    participant: Mapping[str, Any], is_team: bool, selector: bool, where: str, index: int
) -> list[Finding]:
    """AutoGen picks the loader of a participant by its ``component_type``: a wrong one cannot load."""
    kind = participant.get("component_type")
    field = f"participants.{index}.component_type"
    if is_team and kind != "team" and not (selector and kind is None):
        return [Finding("error", where, field, f"must be 'team' for a nested team (got {kind!r})")]
    if not is_team and kind not in ("agent", None):
        return [Finding("error", where, field, f"must be 'agent' for an agent (got {kind!r})")]
    if not is_team and selector and kind is None:
        return [Finding("error", where, field, "must be 'agent': SelectorGroupChat loads it as a team without it")]
    return []


def backend_groups(members: list[MemberReport]) -> dict[str, tuple[str, ...]]:
    """Members grouped as :meth:`AgentCapacity.aggregate` counts them: one backend per shared key."""
    groups: dict[str, tuple[str, ...]] = {}
    for positions in backends([m.contract for m in members]):
        first = members[positions[0]]
        label = first.contract.key if first.contract is not None and first.contract.key else first.name
        groups[label] = tuple(members[i].name for i in positions)
    return groups


def derive(
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
