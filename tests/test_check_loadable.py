"""``check`` fails whenever ``Team.load_component`` would, and reads providers without running them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from autogen_agentchat.base import Team

from autogen_capacity.audit import audit_config
from configs import ROUND_ROBIN, agent, sound, team

Edit = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Edit:
    def edit(config: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = config
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return edit


def _nested_without_component_type(config: dict[str, Any]) -> None:
    inner = team("inner", [agent("x")])
    del inner["component_type"]
    config["config"]["participants"].append(inner)


UNLOADABLE: dict[str, tuple[Edit, str]] = {
    "capacities as text": (_set("config.capacities", "oops"), "[capacities]"),
    "missing class in a real module": (
        _set("config.participants.0.provider", "autogen_agentchat.agents.NoSuchAgent"),
        "NoSuchAgent",
    ),
    "missing module": (_set("config.participants.0.provider", "no_such_package.agents.Agent"), "[provider]"),
    "missing class of a model client": (
        _set("config.participants.1.config.model_client.provider", "autogen_ext.models.replay.NoSuchClient"),
        "[model_client.provider]",
    ),
    "participant that is no component": (_set("config.participants.2", "gamma"), "[participants.2]"),
    "nested team without component_type": (_nested_without_component_type, "component_type"),
}


def run(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "autogen_capacity", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **(env or {})},
        input=stdin,
    )


@pytest.mark.parametrize("name", list(UNLOADABLE))
def test_check_fails_when_load_component_fails(name: str, tmp_path: Path) -> None:
    """Each config AutoGen cannot load fails ``check`` (exit 1), with a line naming the field."""
    edit, named = UNLOADABLE[name]
    config = sound()
    edit(config)
    with pytest.raises((ValueError, TypeError, ImportError, AttributeError)):
        Team.load_component(config)
    path = tmp_path / "team.json"
    path.write_text(json.dumps(config))
    result = run("check", str(path))
    assert result.returncode == 1, result.stdout + result.stderr
    assert named in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_plain_team_with_a_participant_that_is_no_component() -> None:
    """A RoundRobinGroupChat's participants are components too."""
    audit = audit_config(team("rr", [agent("a"), "b"], provider=ROUND_ROBIN))  # type: ignore[list-item]
    assert [f.field for f in audit.errors] == ["participants.1"]


@pytest.fixture(name="provider_package")
def _provider_package(tmp_path: Path) -> Path:
    """A package whose ``__init__`` leaves a mark when it runs, with an agent module inside."""
    package = tmp_path / "site" / "markpkg"
    (package / "agents").mkdir(parents=True)
    marker = tmp_path / "ran"
    (package / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (package / "agents" / "__init__.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nfrom ._impl import MarkAgent\n"
    )
    (package / "agents" / "_impl.py").write_text("class MarkAgent:\n    pass\n")
    return tmp_path


@pytest.mark.parametrize(("cls", "status"), [("MarkAgent", 0), ("NoSuchAgent", 1)])
def test_provider_code_never_runs(provider_package: Path, cls: str, status: int) -> None:
    """``check`` finds a provider's class by reading its package's source: no ``__init__`` of it runs."""
    config = team("t", [{**agent("a"), "provider": f"markpkg.agents.{cls}"}])
    path = provider_package / "team.json"
    path.write_text(json.dumps(config))
    result = run("check", str(path), env={"PYTHONPATH": str(provider_package / "site")})
    assert result.returncode == status, result.stdout + result.stderr
    assert not (provider_package / "ran").exists()
