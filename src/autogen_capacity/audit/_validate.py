"""Validating the parts of a team config the audit reads: contracts, team fields, termination timeouts."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from .._config import CapacityAwareGroupChatConfig
from ..contracts import AgentCapacity, RetryBudget
from ..ledger.config import LedgerConfig
from ._model import CONTRACT_FIELDS, Finding

_MODELS: dict[str, type[BaseModel]] = {
    "capacity": AgentCapacity,
    "selector_capacity": AgentCapacity,
    "retry_budget": RetryBudget,
    "ledger": LedgerConfig,
}
"""The model of each team field that holds one (for "did you mean" on a misspelt field inside it)."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices``, or ``""`` when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def validate_contract(raw: Any, where: str, field_name: str, out: list[Finding]) -> AgentCapacity | None:
    if raw is None:
        return None
    try:
        return AgentCapacity.model_validate(raw)
    except ValidationError as e:
        for error in e.errors():
            loc = ".".join(str(part) for part in error["loc"])
            out.append(
                Finding("error", where, f"{field_name}.{loc}" if loc else field_name, message(error, AgentCapacity))
            )
        return None


def message(error: Mapping[str, Any], model: type[BaseModel] | None = None) -> str:
    """A pydantic error as one phrase; a misspelt field of ``model`` gets the closest real one."""
    text = str(error["msg"]).removeprefix("Value error, ")
    if error.get("type") == "extra_forbidden":
        loc = [str(part) for part in error["loc"]]
        owner = _MODELS.get(loc[0], model) if len(loc) > 1 and model is CapacityAwareGroupChatConfig else model
        if owner is None:
            return "is not a known field"
        what = "a contract field" if owner is AgentCapacity else f"a field of {owner.__name__}"
        return f"is not {what}{did_you_mean(loc[-1], owner.model_fields)}"
    if "input" in error and error.get("type") != "model_type":
        return f"{text} (got {error['input']!r})"
    return text


def schema_findings(inner: Mapping[str, Any], where: str) -> list[Finding]:
    """Fields of the team config other than the contracts and participants (unknown keys, bad routing and
    the like); those are checked one by one elsewhere."""
    rest = {k: v for k, v in inner.items() if k not in CONTRACT_FIELDS}
    rest["participants"] = []
    try:
        CapacityAwareGroupChatConfig.model_validate(rest)
    except ValidationError as e:
        model = CapacityAwareGroupChatConfig
        return [
            Finding("error", where, ".".join(str(p) for p in error["loc"]) or None, message(error, model))
            for error in e.errors()
        ]
    return []


def timeout_of(condition: Any) -> float | None:
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
        seconds = timeout_of(nested)
        if seconds is not None:
            found.append(seconds)
    return min(found) if found else None
