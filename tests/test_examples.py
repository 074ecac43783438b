"""Every example runs offline and exits 0."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.py"))


@pytest.mark.parametrize("example", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_example_runs(example: Path) -> None:
    """The example finishes on its own, offline, with exit status 0."""
    if example.name == "redis_workers.py" and shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    result = subprocess.run(
        [sys.executable, str(example)], capture_output=True, text=True, timeout=180, check=False, cwd=example.parent
    )
    assert result.returncode == 0, f"{example.name} failed:\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr
