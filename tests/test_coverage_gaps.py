"""The command-line tool and the demo, run in-process (tests/test_cli.py runs them as subprocesses, which
coverage does not measure): the same behaviours, asserted on output and exit status."""

from __future__ import annotations

import asyncio
import json
import runpy
import sys
from pathlib import Path
from typing import Any

import pytest

from autogen_capacity import cli
from autogen_capacity.demo import run_demo
from configs import ROUND_ROBIN, agent, sound, team


def write(tmp_path: Path, config: dict[str, Any] | str) -> str:
    path = tmp_path / "team.json"
    path.write_text(config if isinstance(config, str) else json.dumps(config))
    return str(path)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return status, out, err


def overcommitted() -> dict[str, Any]:
    """A team declaring more slots than its members supply (a warning) with a timeout (shown in the tree)."""
    return team(
        "over",
        [agent("a"), agent("b")],
        capacity={"max_concurrent": 9},
        capacities={"a": {"max_concurrent": 1}, "b": {"max_concurrent": 1, "max_queue": 3}},
        timeout_s=30,
    )


class TestInspect:
    def test_tree(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        status, out, _ = run_cli(capsys, "inspect", write(tmp_path, sound()))
        assert status == 0
        assert "team 'pool'  CapacityAwareGroupChat  routing headroom  key 'pool'" in out
        assert "member 'gamma'  key 'gamma'  slots 1  rpm 30  tpm -" in out
        assert "max_concurrent sum(alpha=4 + beta=2 + gamma=1) = 7, capped by declared 5 -> 5" in out

    def test_warnings_timeout_and_queue_are_shown(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        status, out, _ = run_cli(capsys, "inspect", write(tmp_path, overcommitted()))
        assert status == 0
        assert "timeout 30s" in out
        assert "queue 3" in out
        assert "warning: team 'over' [capacity.max_concurrent]" in out

    def test_nested_plain_team_and_unbounded_members(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        config = team("rr", [agent("a"), team("child", [agent("x")])], provider=ROUND_ROBIN)
        status, out, _ = run_cli(capsys, "inspect", write(tmp_path, config))
        assert status == 0
        assert "plain AutoGen team enforces no contract" in out
        assert "no contract (unbounded, never deferred)" in out
        assert "every member unbounded" in out

    def test_pipeline_derivation(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        config = team(
            "line",
            [agent("a"), agent("b")],
            capacities={"a": {"max_concurrent": 3}, "b": {"max_concurrent": 2}},
            routing="round_robin",
        )
        status, out, _ = run_cli(capsys, "inspect", write(tmp_path, config))
        assert status == 0
        assert "pipeline (every member speaks in turn): max_concurrent min(a=3, b=2) = 2" in out

    def test_json(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        status, out, _ = run_cli(capsys, "inspect", "--json", write(tmp_path, sound()))
        assert status == 0
        data = json.loads(out)
        assert data["team"]["effective"]["max_concurrent"] == 5
        assert data["findings"] == []

    def test_an_invalid_contract_is_a_usage_error(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        config = team("bad", [agent("a")], capacities={"a": {"max_concurrent": 0}})
        status, _, err = run_cli(capsys, "inspect", write(tmp_path, config))
        assert status == 2
        assert err.startswith("autogen-capacity: ")
        assert "max_concurrent" in err


class TestCheck:
    def test_sound_config_is_ok(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        status, out, _ = run_cli(capsys, "check", write(tmp_path, sound()))
        assert status == 0
        assert "OK: " in out
        assert "1 team(s), 3 member(s); 0 error(s), 0 warning(s)" in out

    def test_warnings_fail_only_with_strict(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        path = write(tmp_path, overcommitted())
        status, out, _ = run_cli(capsys, "check", path)
        assert (status, "OK: " in out) == (0, True)
        status, out, _ = run_cli(capsys, "check", "--strict", path)
        assert status == 1
        assert "FAILED: " in out
        assert "warning: " in out

    def test_errors_fail(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        config = team("bad", [agent("a")], capacities={"nobody": {"max_concurrent": 1}})
        status, out, _ = run_cli(capsys, "check", write(tmp_path, config))
        assert status == 1
        assert "error: " in out
        assert "nobody" in out

    @pytest.mark.parametrize(
        ("content", "message"),
        [(None, "no such file"), ("{", "not valid JSON"), ("[]", "not a component config")],
    )
    def test_unusable_file(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, message: str
    ) -> None:
        path = str(tmp_path / "missing.json") if content is None else write(tmp_path, content)
        status, out, err = run_cli(capsys, "check", path)
        assert status == 2
        assert out == ""
        assert err.count("\n") == 1
        assert message in err
        assert err.startswith(f"autogen-capacity: {path}: ")

    def test_a_directory_cannot_be_read(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        status, _, err = run_cli(capsys, "check", str(tmp_path))
        assert status == 2
        assert "cannot read it" in err

    def test_keyboard_interrupt_exits_130(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        def interrupted(_: object) -> int:
            raise KeyboardInterrupt

        monkeypatch.setattr(cli, "_check", interrupted)
        assert cli.main(["check", write(tmp_path, sound())]) == 130


class TestDemo:
    async def test_quick_demo_prints_both_teams(self, capsys: pytest.CaptureFixture[str]) -> None:
        """The quick demo runs in another thread (it calls asyncio.run) and compares both teams."""
        status = await asyncio.to_thread(cli.main, ["demo", "--quick", "--no-live", "--runs", "4"])
        out = capsys.readouterr().out
        assert status == 0
        assert "4 team runs at once, 3 turns each" in out
        assert "CapacityAwareGroupChat: 4/4 runs completed" in out
        assert "Same burst, side by side" in out
        assert "runs ended by an overload error" in out

    async def test_run_demo_keeps_limits_and_refreshes(self) -> None:
        """The capacity-aware phase completes every run within every backend's limit; refresh sees each phase."""
        seen: list[str] = []

        def refresh(stats: Any, backends: Any, snapshot: Any) -> None:
            seen.append(stats.team)
            table = cli._live_table(stats, backends, snapshot)  # what the live view would draw
            assert table is not None

        result = await run_demo(runs=4, turns=3, scale=0.1, refresh=refresh)
        cap = result.capacity
        assert cap.completed == cap.runs == 4
        assert cap.overload_errors == 0
        assert all(cap.peaks[name] <= cap.limits[name] for name in cap.limits)
        assert set(seen) == {result.capacity.team, result.round_robin.team}

    def test_runs_must_be_positive(self, capsys: pytest.CaptureFixture[str]) -> None:
        with pytest.raises(SystemExit) as exit_:
            cli.main(["demo", "--runs", "0"])
        assert exit_.value.code == 2
        assert "must be at least 1" in capsys.readouterr().err


def test_python_dash_m_runs_the_cli(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``python -m autogen_capacity check FILE`` exits with check's status."""
    monkeypatch.setattr(sys, "argv", ["autogen_capacity", "check", write(tmp_path, sound())])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("autogen_capacity", run_name="__main__")
    assert exit_.value.code == 0
    assert "OK: " in capsys.readouterr().out
