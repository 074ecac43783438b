"""The ``autogen-capacity`` command, run as users run it: a subprocess, judged by its output and exit status."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from configs import ROUND_ROBIN, TEAM, agent, sound, team


def run(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "autogen_capacity", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def write(tmp_path: Path, config: dict[str, Any], name: str = "team.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(config))
    return path


def assert_one_clean_line(result: subprocess.CompletedProcess[str]) -> str:
    """A user mistake: one line on stderr, no traceback."""
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


class TestInspect:
    def test_prints_the_contract_tree(self, tmp_path: Path) -> None:
        """The tree shows the team, each member's key, slots, rates, backoff schedule and retries, and the
        effective capacity with its derivation."""
        result = run("inspect", write(tmp_path, sound()))
        assert result.returncode == 0, result.stderr
        out = result.stdout
        assert "team 'pool'" in out
        assert "member 'gamma'  key 'gamma'  slots 1  rpm 30  tpm -" in out
        assert "backoff constant [0.5, 0.5, 0.5, 0.5, 0.5] s full jitter  retries 5" in out
        assert "effective  slots 5  rpm 210" in out
        assert "max_concurrent sum(alpha=4 + beta=2 + gamma=1) = 7, capped by declared 5 -> 5" in out

    def test_nested_plain_autogen_team(self, tmp_path: Path) -> None:
        """Any AutoGen team loads: a RoundRobinGroupChat with a capacity-aware team inside."""
        result = run("inspect", write(tmp_path, team("rr", [agent("a"), sound()], provider=ROUND_ROBIN)))
        assert result.returncode == 0, result.stderr
        assert "team 'rr'  RoundRobinGroupChat" in result.stdout
        assert "plain AutoGen team enforces no contract" in result.stdout
        assert "team 'pool'  CapacityAwareGroupChat" in result.stdout

    def test_json(self, tmp_path: Path) -> None:
        """``--json`` prints the same tree as JSON, with the numbers."""
        result = run("inspect", "--json", write(tmp_path, sound()))
        assert result.returncode == 0, result.stderr
        data = json.loads(result.stdout)
        root = data["team"]
        assert (root["name"], root["mode"], root["routing"]) == ("pool", "pool", "headroom")
        assert root["effective"]["max_concurrent"] == 5
        assert root["effective"]["rpm"] == 210
        assert root["declared"]["max_concurrent"] == 5
        assert [m["contract"]["max_concurrent"] for m in root["members"]] == [4, 2, 1]
        assert root["members"][0]["contract"]["backoff_schedule_s"] == [1.0, 2.0, 4.0, 8.0, 16.0]
        assert root["derivation"][0] == {
            "field": "max_concurrent",
            "members": {"alpha": 4, "beta": 2, "gamma": 1},
            "keys": {"alpha": 4, "beta": 2, "gamma": 1},
            "combined": 7,
            "declared": 5,
            "effective": 5,
        }
        assert data["findings"] == []

    def test_warnings_are_shown_under_the_tree(self, tmp_path: Path) -> None:
        """Warnings do not stop inspect: they follow the tree."""
        config = sound()
        del config["config"]["capacities"]["gamma"]
        result = run("inspect", write(tmp_path, config))
        assert result.returncode == 0
        assert "warning: team 'pool' > member 'gamma' [capacities.gamma]" in result.stdout

    def test_invalid_contract_names_member_and_field(self, tmp_path: Path) -> None:
        """An invalid contract is a user mistake: one line naming file, member and field; exit 2."""
        config = sound()
        config["config"]["capacities"]["beta"]["max_concurrent"] = 0
        path = write(tmp_path, config)
        result = run("inspect", path)
        assert result.returncode == 2
        line = assert_one_clean_line(result)
        assert str(path) in line
        assert "member 'beta'" in line
        assert "capacities.beta.max_concurrent" in line
        assert result.stdout == ""


class TestSharedKeys:
    def test_inspect_counts_a_shared_key_once(self, tmp_path: Path) -> None:
        """Members sharing a key appear once in the derivation, grouped under the key."""
        config = team(
            "t",
            [agent("a"), agent("b")],
            capacities={"a": {"max_concurrent": 8, "key": "gpt-4o"}, "b": {"max_concurrent": 8, "key": "gpt-4o"}},
        )
        result = run("inspect", write(tmp_path, config))
        assert result.returncode == 0, result.stderr
        assert "max_concurrent sum(gpt-4o[a, b]=8) = 8" in result.stdout
        assert "effective  slots 8" in result.stdout


class TestCheck:
    def test_sound_config(self, tmp_path: Path) -> None:
        """A sound config passes, with a one-line verdict."""
        result = run("check", write(tmp_path, sound()))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "OK:" in result.stdout
        assert "1 team(s), 3 member(s); 0 error(s), 0 warning(s)" in result.stdout

    def test_invalid_contract_fails(self, tmp_path: Path) -> None:
        """An invalid contract fails the check with exit 1, naming member and field."""
        config = sound()
        config["config"]["capacities"]["beta"]["backoff_strategy"] = "fibonacci"
        result = run("check", write(tmp_path, config))
        assert result.returncode == 1
        assert "error: team 'pool' > member 'beta' [capacities.beta.backoff_strategy]: Input should be" in result.stdout
        assert "FAILED:" in result.stdout
        assert "Traceback" not in result.stderr

    def test_unknown_capacities_entry_fails(self, tmp_path: Path) -> None:
        """A capacities entry for no participant fails the check."""
        config = sound()
        config["config"]["capacities"]["delta"] = {"max_concurrent": 1}
        result = run("check", write(tmp_path, config))
        assert result.returncode == 1
        assert "error: team 'pool' [capacities.delta]: names no participant" in result.stdout

    def test_warnings_pass_unless_strict(self, tmp_path: Path) -> None:
        """Warnings alone pass; ``--strict`` fails on them."""
        config = team("t", [agent("a")], capacities={"a": {"max_concurrent": 1}}, timeout_s=10)
        path = write(tmp_path, config)
        lenient, strict = run("check", path), run("check", "--strict", path)
        assert lenient.returncode == 0
        assert strict.returncode == 1
        for result in (lenient, strict):
            assert "warning: team 't' > member 'a' [capacities.a.max_caller_retries]" in result.stdout
        assert "OK:" in lenient.stdout
        assert "FAILED:" in strict.stdout


class TestUserMistakes:
    @pytest.mark.parametrize("command", ["inspect", "check"])
    def test_missing_file(self, tmp_path: Path, command: str) -> None:
        """A missing file: one line naming it, exit 2."""
        path = tmp_path / "absent.json"
        result = run(command, path)
        assert result.returncode == 2
        assert assert_one_clean_line(result) == f"autogen-capacity: {path}: no such file"

    @pytest.mark.parametrize("command", ["inspect", "check"])
    def test_bad_json(self, tmp_path: Path, command: str) -> None:
        """Bad JSON: one line naming the file and the position, exit 2."""
        path = tmp_path / "bad.json"
        path.write_text('{"provider": "x",\n  oops}')
        result = run(command, path)
        assert result.returncode == 2
        line = assert_one_clean_line(result)
        assert f"{path}: not valid JSON (line 2" in line

    @pytest.mark.parametrize("command", ["inspect", "check"])
    def test_not_a_team(self, tmp_path: Path, command: str) -> None:
        """An agent's config is not a team config: one line, exit 2."""
        path = write(tmp_path, agent("a"))
        result = run(command, path)
        assert result.returncode == 2
        line = assert_one_clean_line(result)
        assert str(path) in line
        assert "not a team config (component_type 'agent')" in line

    @pytest.mark.parametrize("command", ["inspect", "check"])
    def test_not_utf8(self, tmp_path: Path, command: str) -> None:
        """A file that is not UTF-8: one line naming it and the offending byte, exit 2."""
        path = tmp_path / "latin1.json"
        path.write_bytes('{"provider": "caf\u00e9"}'.encode("latin-1"))
        result = run(command, path)
        assert result.returncode == 2
        line = assert_one_clean_line(result)
        assert f"{path}: not UTF-8 text (byte 0xe9 at position" in line

    @pytest.mark.parametrize("command", ["inspect", "check"])
    @pytest.mark.parametrize("depth", [250, 100_000])
    def test_deeply_nested_json(self, tmp_path: Path, command: str, depth: int) -> None:
        """Teams nested deeper than Python can walk: one line, exit 2."""
        path = tmp_path / "deep.json"
        opening = f'{{"provider": "{TEAM}", "config": {{"participants": ['
        path.write_text(opening * depth + json.dumps(agent("leaf")) + "]}}" * depth)
        result = run(command, path)
        assert result.returncode == 2, result.stdout + result.stderr
        line = assert_one_clean_line(result)
        assert f"{path}: nested too deeply" in line

    def test_unknown_command(self) -> None:
        """argparse reports usage errors with exit 2."""
        result = run("frobnicate")
        assert result.returncode == 2
        assert "invalid choice" in result.stderr


class TestDemo:
    def test_quick_no_live(self) -> None:
        """The quick demo runs offline and prints both teams' results side by side."""
        result = run("demo", "--quick", "--no-live", timeout=120)
        assert result.returncode == 0, result.stderr
        out = result.stdout
        assert "CapacityAwareGroupChat: 6/6 runs completed" in out
        assert "RoundRobinGroupChat:" in out
        assert "Same burst, side by side" in out
        assert "runs completed" in out
        assert "wall time" in out
        assert "Traceback" not in result.stderr

    def test_runs_flag(self) -> None:
        """``--runs`` sets the size of the burst."""
        result = run("demo", "--quick", "--no-live", "--runs", "3", timeout=120)
        assert result.returncode == 0, result.stderr
        assert "3 team runs at once" in result.stdout
        assert "CapacityAwareGroupChat: 3/3 runs completed" in result.stdout


class TestInterrupt:
    def test_ctrl_c_during_demo_is_quiet(self) -> None:
        """SIGINT while the demo's teams run: no traceback, no log noise, exit 130."""
        with subprocess.Popen(
            [sys.executable, "-m", "autogen_capacity", "demo", "--no-live"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as demo:
            assert demo.stdout is not None
            while "runs under way" not in (line := demo.stdout.readline()):
                assert line, "the demo ended before its teams ran"
            demo.send_signal(signal.SIGINT)
            out, err = demo.communicate(timeout=60)
        assert demo.returncode == 130
        assert "Traceback" not in out + err
        assert err.strip() == ""
