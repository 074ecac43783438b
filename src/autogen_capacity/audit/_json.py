"""The audit as JSON (``autogen-capacity inspect --json``)."""

from __future__ import annotations

from typing import Any

from ..contracts import AgentCapacity
from ._model import Audit, Finding, TeamReport


def contract_to_dict(contract: AgentCapacity | None) -> dict[str, Any] | None:
    """A contract's fields plus its un-jittered ``backoff_schedule_s``."""
    if contract is None:
        return None
    return {**contract.model_dump(mode="json"), "backoff_schedule_s": list(contract.backoff_schedule())}


def finding_to_dict(finding: Finding) -> dict[str, Any]:
    """``{"level", "where", "field", "message"}``."""
    return {"level": finding.level, "where": finding.where, "field": finding.field, "message": finding.message}


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
                "keys": dict(d.keys),
                "combined": d.combined,
                "declared": d.declared,
                "effective": d.effective,
            }
            for d in team.derivation
        ],
        "backends": {key: list(names) for key, names in team.backends.items()},
        "timeout_s": team.timeout_s,
        "members": [
            {
                "name": m.name,
                "provider": m.provider,
                "key": m.key,
                "source": m.source,
                "contract": contract_to_dict(m.contract),
                "team": _team_to_dict(m.team) if m.team is not None else None,
                "wrapped": [_team_to_dict(t) for t in m.wrapped],
            }
            for m in team.members
        ],
    }


def audit_to_dict(audit: Audit) -> dict[str, Any]:
    """The audit as JSON-ready data: ``{"team": {...}, "findings": [...]}``."""
    return {
        "team": _team_to_dict(audit.team),
        "findings": [finding_to_dict(f) for f in audit.findings],
    }
