"""Every Python block in the README and docs either runs as it stands, offline, or says it is a fragment.

A block whose info string is ```` ```python fragment ```` is a fragment (it needs names defined elsewhere, a Redis
server or an API key); every other ```` ```python ```` block is a complete program, run here in a fresh interpreter,
in a scratch directory, with no API key (issue 16, item 7). The convention is documented in ``docs/testing.md``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(?P<info>[^\n`]*)\n(?P<code>.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
TIMEOUT_S = 120


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    info: str
    code: str

    @property
    def is_python(self) -> bool:
        return self.info.split()[:1] == ["python"]

    @property
    def is_fragment(self) -> bool:
        return self.info.split()[1:] == ["fragment"]

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks() -> list[Block]:
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append(Block(page, line, match["info"].strip(), match["code"]))
    return found


PYTHON = [b for b in blocks() if b.is_python]
PROGRAMS = [b for b in PYTHON if not b.is_fragment]


def test_the_blocks_are_found() -> None:
    """The scan sees the README's example and the tutorial's steps, so a broken pattern cannot pass vacuously."""
    pages = {b.page.name for b in PROGRAMS}
    assert {"README.md", "tutorial.md", "testing.md"} <= pages
    assert len(PROGRAMS) >= 8


@pytest.mark.parametrize("block", PYTHON, ids=str)
def test_every_python_block_is_a_program_or_a_marked_fragment(block: Block) -> None:
    """``python`` or ``python fragment``, nothing else: a typo in the marker would make a fragment run."""
    assert block.info in ("python", "python fragment"), block.info


def test_the_convention_is_documented() -> None:
    """docs/testing.md tells contributors how to mark a fragment."""
    assert "```python fragment" in (ROOT / "docs" / "testing.md").read_text()


@pytest.mark.parametrize("block", PROGRAMS, ids=str)
def test_complete_programs_run_offline(block: Block, tmp_path: Path) -> None:
    """Each complete block runs top to bottom in a fresh interpreter, offline, and exits 0 without warnings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AZURE_OPENAI_"))}
    env["PYTHONWARNINGS"] = "error"
    script = tmp_path / "block.py"
    script.write_text(block.code)
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f"{block} failed:\n{done.stderr[-3000:]}"
