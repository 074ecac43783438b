"""What ``check`` used to miss: teams inside agents, unset ledger variables, typos, several files, CI output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from autogen_agentchat.base import Team

from autogen_capacity.audit import audit_config
from configs import ROUND_ROBIN, agent, sound, team

SOCIETY = "autogen_agentchat.agents.SocietyOfMindAgent"
UNSET = "AUTOGEN_CAPACITY_TEST_UNSET_URL"


def society(name: str, inner: dict[str, Any]) -> dict[str, Any]:
    """A SocietyOfMindAgent wrapping ``inner``."""
    return {
        "provider": SOCIETY,
        "component_type": "agent",
        "config": {
            "name": name,
            "description": "A society of mind.",
            "team": inner,
            "model_client": agent(name)["config"]["model_client"],
            "instruction": "Summarize.",
            "response_prompt": "Answer.",
        },
    }


def run(*args: str | Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != UNSET}
    return subprocess.run(
        [sys.executable, "-m", "autogen_capacity", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        input=stdin,
        env=env,
    )


def write(tmp_path: Path, config: dict[str, Any], name: str = "team.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(config))
    return path


class TestSocietyOfMind:
    def test_team_inside_a_society_of_mind_agent_is_audited(self) -> None:
        """An invalid contract in the team a SocietyOfMindAgent wraps is an error naming the path."""
        inner = sound()
        inner["config"]["capacities"]["beta"]["max_concurrent"] = 0
        audit = audit_config(team("rr", [agent("a"), society("som", inner)], provider=ROUND_ROBIN))
        (error,) = audit.errors
        assert error.where == "team 'rr' > member 'som' > team 'pool' > member 'beta'"
        assert error.field == "capacities.beta.max_concurrent"
        assert [t.name for t in audit.teams()] == ["rr", "pool"]

    def test_the_sample_loads_and_inspect_shows_the_inner_team(self, tmp_path: Path) -> None:
        """The wrapped team appears under its agent in the tree, and the config really loads."""
        config = team("rr", [agent("a"), society("som", sound())], provider=ROUND_ROBIN)
        Team.load_component(config)
        result = run("inspect", write(tmp_path, config))
        assert result.returncode == 0, result.stderr
        assert "member 'som'" in result.stdout
        assert "team 'pool'  CapacityAwareGroupChat" in result.stdout


class TestLedgerVariable:
    def test_unset_variable_is_a_warning(self, tmp_path: Path) -> None:
        """A Redis ledger whose URL variable is unset: a warning naming it; ``--strict`` fails."""
        config = sound()
        config["config"]["ledger"] = {"provider": "redis", "url_env": UNSET}
        path = write(tmp_path, config)
        lenient, strict = run("check", path), run("check", "--strict", path)
        assert (lenient.returncode, strict.returncode) == (0, 1)
        assert f"[ledger.url_env]: the environment variable {UNSET} is not set here" in lenient.stdout

    def test_set_variable_is_fine(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """With the variable set there is nothing to say."""
        monkeypatch.setenv(UNSET, "redis://localhost:6379/0")
        config = sound()
        config["config"]["ledger"] = {"provider": "redis", "url_env": UNSET}
        assert audit_config(config).findings == ()


class TestDidYouMean:
    @pytest.mark.parametrize(
        ("edit", "field", "suggestion"),
        [
            (("capacities", "alpha", "max_concurent"), "capacities.alpha.max_concurent", "max_concurrent"),
            (("capacity", "backof_strategy"), "capacity.backof_strategy", "backoff_strategy"),
            (("capacites",), "capacites", "capacities"),
            (("ledger", "url_evn"), "ledger.url_evn", "url_env"),
        ],
    )
    def test_misspelt_field(self, edit: tuple[str, ...], field: str, suggestion: str) -> None:
        """A misspelt field names the closest real one."""
        config = sound()
        if edit[0] == "ledger":
            config["config"]["ledger"] = {"provider": "redis"}
        node = config["config"]
        for part in edit[:-1]:
            node = node[part]
        node[edit[-1]] = 1
        (error,) = [f for f in audit_config(config).errors if f.field == field]
        assert error.message.endswith(f"did you mean {suggestion!r}?")


class TestSeveralFilesAndJson:
    def test_several_files(self, tmp_path: Path) -> None:
        """Each file gets its verdict; one failing file fails the run."""
        broken = sound()
        broken["config"]["capacities"]["beta"]["max_concurrent"] = 0
        good, bad = write(tmp_path, sound(), "good.json"), write(tmp_path, broken, "bad.json")
        result = run("check", good, bad)
        assert result.returncode == 1
        assert f"OK: {good}" in result.stdout
        assert f"FAILED: {bad}" in result.stdout

    def test_unreadable_file_among_others(self, tmp_path: Path) -> None:
        """A file that cannot be read is one line on stderr and exit 2; the others are still checked."""
        good, missing = write(tmp_path, sound(), "good.json"), tmp_path / "absent.json"
        result = run("check", good, missing)
        assert result.returncode == 2
        assert f"OK: {good}" in result.stdout
        assert result.stderr.strip() == f"autogen-capacity: {missing}: no such file"

    @pytest.mark.parametrize(("command", "shown"), [("check", "OK: <stdin>: 1 team(s)"), ("inspect", "team 'pool'")])
    def test_stdin(self, command: str, shown: str) -> None:
        """``-`` reads the config from stdin."""
        result = run(command, "-", stdin=json.dumps(sound()))
        assert result.returncode == 0, result.stderr
        assert shown in result.stdout

    def test_bad_json_on_stdin(self) -> None:
        """Bad JSON on stdin: one line naming ``<stdin>``, exit 2."""
        result = run("check", "-", stdin="{oops")
        assert result.returncode == 2
        assert result.stderr.startswith("autogen-capacity: <stdin>: not valid JSON")
        assert "Traceback" not in result.stderr

    def test_json_report(self, tmp_path: Path) -> None:
        """``--json`` prints one document for CI: a verdict per file, with its findings."""
        warned = sound()
        del warned["config"]["capacities"]["gamma"]
        good, soft = write(tmp_path, sound(), "good.json"), write(tmp_path, warned, "soft.json")
        missing = tmp_path / "absent.json"
        result = run("check", "--json", "--strict", good, soft, missing)
        assert result.returncode == 2
        data = json.loads(result.stdout)
        assert data["ok"] is False
        assert data["strict"] is True
        by_path = {f["path"]: f for f in data["files"]}
        assert by_path[str(good)] == {
            "path": str(good),
            "ok": True,
            "error": None,
            "teams": 1,
            "members": 3,
            "errors": 0,
            "warnings": 0,
            "findings": [],
        }
        assert by_path[str(soft)]["ok"] is False
        assert by_path[str(soft)]["findings"][0]["field"] == "capacities.gamma"
        assert by_path[str(missing)]["error"] == f"{missing}: no such file"
