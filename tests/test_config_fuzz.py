"""Config fuzzing: malformed contracts and team configs (wrong types, negative numbers, missing fields, unknown
providers, deep nesting) must fail with a clear exception when loaded, and make ``autogen-capacity check``
exit 1 or 2 with no traceback. Nothing may hang: every load runs under a timeout."""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import json
from pathlib import Path
from typing import Any

import pytest
from autogen_agentchat.base import Team
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autogen_capacity import AgentCapacity, CapacityAwareGroupChat
from autogen_capacity.cli import main
from configs import agent, sound, team

LOAD_TIMEOUT_S = 10.0
CLEAR_ERRORS = (ValueError, TypeError, KeyError, ImportError, AttributeError)
"""ValueError covers pydantic's ValidationError, ContractError and UnusableConfig."""
FUZZ = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
CONTRACT_FIELDS = [*AgentCapacity.model_fields, "max_concurent", "timeout", ""]

junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=6),
    st.lists(st.integers(-3, 3), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
"""Any JSON value, of any type."""

fuzzed_contract = st.dictionaries(st.sampled_from(CONTRACT_FIELDS), junk, max_size=5)
"""A contract-shaped dict: real and misspelt fields with values of any type (sometimes valid)."""


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(max_workers=1)


def load(config: Any) -> object:
    """``Team.load_component(config)``, failing the test if it does not return or raise within the bound."""
    with _executor() as pool:
        return pool.submit(Team.load_component, config).result(timeout=LOAD_TIMEOUT_S)


def assert_clear_failure(config: Any) -> BaseException:
    """Loading ``config`` (through Team and through CapacityAwareGroupChat) raises a clear error."""
    errors = []
    for loader in (Team.load_component, CapacityAwareGroupChat.load_component):
        with _executor() as pool:
            future = pool.submit(loader, config)
            try:
                future.result(timeout=LOAD_TIMEOUT_S)
            except CLEAR_ERRORS as e:
                errors.append(e)
            else:
                pytest.fail(f"{loader.__qualname__} accepted a malformed config: {json.dumps(config)[:300]}")
    assert all(str(e) for e in errors), f"an error with no message: {errors!r}"
    return errors[0]


def check(tmp_path: Path, config: Any, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``autogen-capacity check`` in-process on ``config`` written to a file: (status, stdout, stderr)."""
    path = tmp_path / "team.json"
    path.write_text(config if isinstance(config, str) else json.dumps(config))
    capsys.readouterr()
    with _executor() as pool:
        status = pool.submit(main, ["check", str(path)]).result(timeout=LOAD_TIMEOUT_S)
    out, err = capsys.readouterr()
    assert "Traceback" not in err + out, err
    return status, out, err


# ---------------------------------------------------------------- malformed by construction


def _set(path: tuple[str | int, ...], value: Any) -> Any:
    def mutate(config: dict[str, Any]) -> None:
        node: Any = config
        for step in path[:-1]:
            node = node[step]
        node[path[-1]] = value

    return mutate


def _delete(path: tuple[str, ...]) -> Any:
    def mutate(config: dict[str, Any]) -> None:
        node: Any = config
        for step in path[:-1]:
            node = node[step]
        del node[path[-1]]

    return mutate


def nested(depth: int, leaf: dict[str, Any]) -> dict[str, Any]:
    """``depth`` capacity-aware teams, each inside the next, around ``leaf``."""
    config = leaf
    for level in range(depth):
        config = team(f"level{level}", [config, agent(f"agent{level}")])
    return config


BROKEN_CONTRACT = {"max_concurrent": -1}
MALFORMATIONS: dict[str, Any] = {
    "negative slots": _set(("config", "capacities", "alpha", "max_concurrent"), -3),
    "zero slots": _set(("config", "capacity", "max_concurrent"), 0),
    "slots as text": _set(("config", "capacities", "beta", "max_concurrent"), "two"),
    "contract as text": _set(("config", "capacity"), "lots"),
    "contract as list": _set(("config", "capacities", "gamma"), [1, 2]),
    "misspelt field": _set(("config", "capacities", "alpha", "max_concurent"), 3),
    "ceiling below initial": _set(("config", "capacities", "gamma", "backoff_ceiling_ms"), 10),
    "negative rpm": _set(("config", "capacities", "alpha", "rpm"), -5),
    "unknown strategy": _set(("config", "capacities", "alpha", "backoff_strategy"), "fibonacci"),
    "negative retries": _set(("config", "capacities", "alpha", "max_caller_retries"), -1),
    "unknown member": _set(("config", "capacities", "nobody"), {"max_concurrent": 1}),
    "unknown routing": _set(("config", "routing"), "fastest"),
    "unknown on_exhausted": _set(("config", "on_exhausted"), "panic"),
    "negative exhausted ttl": _set(("config", "exhausted_ttl_s"), -1),
    "zero selector attempts": _set(("config", "max_selector_attempts"), 0),
    "unknown team field": _set(("config", "capacity_hint"), 3),
    "participants as text": _set(("config", "participants"), "alpha"),
    "participant as number": _set(("config", "participants", 0), 42),
    "no participants field": _delete(("config", "participants")),
    "no config": _delete(("config",)),
    "no provider": _delete(("provider",)),
    "unknown provider": _set(("provider",), "nowhere.to.be.Found"),
    "unknown member provider": _set(("config", "participants", 1, "provider"), "nowhere.Agent"),
    "config as list": _set(("config",), []),
    "duplicate participant": _set(("config", "participants", 2), agent("alpha")),
}


@pytest.mark.parametrize("malformation", list(MALFORMATIONS))
def test_each_malformation_fails_clearly(malformation: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each malformed team config raises a clear error when loaded, and ``check`` exits 1 or 2 without a
    traceback, saying what is wrong."""
    config = sound()
    MALFORMATIONS[malformation](config)
    assert_clear_failure(config)
    status, out, err = check(tmp_path, config, capsys)
    assert status in (1, 2), f"check exited {status} for {malformation!r}:\n{out}{err}"
    assert (out + err).strip()


@FUZZ
@given(
    malformations=st.lists(st.sampled_from(list(MALFORMATIONS)), min_size=1, max_size=3, unique=True),
    depth=st.integers(0, 12),
)
def test_combined_malformations_fail_clearly(
    malformations: list[str], depth: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Several malformations at once, the broken team nested ``depth`` levels deep, still fail clearly."""
    config = sound()
    for name in malformations:
        with contextlib.suppress(KeyError, TypeError, IndexError):  # an earlier one removed what this one edits
            MALFORMATIONS[name](config)
    wrapped = nested(depth, config)
    assert_clear_failure(wrapped)
    status, _, _ = check(tmp_path, wrapped, capsys)
    assert status in (1, 2)


@pytest.mark.parametrize("malformation", ["participants as text", "no participants field"])
def test_check_reports_a_nested_team_of_the_wrong_shape(
    malformation: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """At the top, ``check`` exits 2 for these; one level down it must not say OK for a parent that cannot load."""
    config = sound()
    MALFORMATIONS[malformation](config)
    status, _, _ = check(tmp_path, nested(1, config), capsys)
    assert status in (1, 2)


def test_deep_nesting_with_a_broken_leaf(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A broken contract forty teams deep is found (and a sound one that deep loads)."""
    leaf = team("leaf", [agent("x")], capacities={"x": BROKEN_CONTRACT})
    error = assert_clear_failure(nested(40, leaf))
    assert "max_concurrent" in str(error)
    status, out, _ = check(tmp_path, nested(40, leaf), capsys)
    assert status == 1
    assert "max_concurrent" in out
    sound_leaf = team("leaf", [agent("x")], capacities={"x": {"max_concurrent": 1}})
    assert isinstance(load(nested(40, sound_leaf)), CapacityAwareGroupChat)


@pytest.mark.parametrize(
    "text",
    ["", "{", "[]", "42", '"team"', "null", '{"provider": 3}', '{"provider": "x", "config": {}}', "{" * 5000],
)
def test_unusable_files_exit_2_without_traceback(text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Empty, truncated, non-object, absurdly nested or non-component JSON: exit 1 or 2, one clean message."""
    status, _, err = check(tmp_path, text, capsys)
    assert status in (1, 2)
    assert err.strip() or status == 1


# ---------------------------------------------------------------- random noise


@FUZZ
@given(capacity=fuzzed_contract, member=fuzzed_contract)
def test_fuzzed_contracts_load_or_fail_clearly(
    capacity: dict[str, Any], member: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Contracts with any fields and any values: the team loads exactly when both contracts are valid, else
    a clear error; ``check`` agrees (0 when valid, 1 or 2 when not) and never prints a traceback."""
    config = team("fuzz", [agent("alpha"), agent("beta")], capacity=capacity, capacities={"alpha": member})
    valid = _valid(capacity) and _valid(member)
    if valid:
        loaded = load(config)
        assert isinstance(loaded, CapacityAwareGroupChat)
        assert loaded.capacity_of("alpha") == AgentCapacity.model_validate(member)
    else:
        assert_clear_failure(config)
    status, out, err = check(tmp_path, config, capsys)
    if valid:
        assert status in (0, 1), out + err  # 1: the audit may find real errors in a valid contract
    else:
        assert status in (1, 2), out + err


@FUZZ
@given(
    field=st.sampled_from(["name", "max_turns", "routing", "emit_team_events", "participants", "capacities"]),
    value=junk,
)
def test_fuzzed_team_fields_load_or_fail_clearly(
    field: str, value: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A team field set to a value of any type: loads, or fails with a clear error; ``check`` never shows a
    traceback and exits 0, 1 or 2."""
    config = sound()
    config["config"][field] = value
    with contextlib.suppress(*CLEAR_ERRORS):
        load(config)
    status, _, _ = check(tmp_path, config, capsys)
    assert status in (0, 1, 2)


def _valid(contract: dict[str, Any]) -> bool:
    try:
        AgentCapacity.model_validate(copy.deepcopy(contract))
    except ValueError:
        return False
    return True
