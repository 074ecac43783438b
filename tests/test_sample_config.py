"""``examples/team.json``: a complete sample that ``check --strict`` passes and AutoGen loads and runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from autogen_agentchat.base import Team

from autogen_capacity import CapacityAwareGroupChat

SAMPLE = Path(__file__).parent.parent / "examples" / "team.json"


def test_check_strict_passes() -> None:
    """The installed command passes the sample with no finding, even with ``--strict``."""
    result = subprocess.run(
        [sys.executable, "-m", "autogen_capacity", "check", "--strict", str(SAMPLE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 error(s), 0 warning(s)" in result.stdout


async def test_loads_and_runs() -> None:
    """Both loaders build the team from the sample; its shared key counts once, and a run completes."""
    config = json.loads(SAMPLE.read_text(encoding="utf-8"))
    assert isinstance(Team.load_component(config), CapacityAwareGroupChat)
    team = CapacityAwareGroupChat.load_component(config)
    assert team.capacity is not None
    assert (team.capacity.max_concurrent, team.capacity.rpm) == (5, 150)
    result = await team.run(task="What is a capacity contract?")
    assert result.stop_reason is not None
    assert not result.stop_reason.startswith("Capacity exhausted")
