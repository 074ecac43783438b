"""Running part of a scenario in fresh Python processes, one after another, and collecting what each prints.

A process's memory layout and hash seed change how fast the same code runs in it by several per cent, for
AutoGen's teams and ours alike; repeats inside one process cannot average that out, so the timed scenarios
spread their repeats over several processes (as pyperf does with its worker processes).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["in_fresh_process", "worker_command"]

ROOT = Path(__file__).resolve().parent.parent
"""The directory ``benchmarks`` is imported from."""


def worker_command(module: str, *args: object) -> list[str]:
    """``python -m module args...`` with this interpreter."""
    return [sys.executable, "-m", module, *map(str, args)]


async def in_fresh_process(module: str, *args: object) -> Any:
    """Run ``python -m module args...`` (from the repository's root) and return the JSON it prints on stdout.

    Raises:
        RuntimeError: the process failed, or printed no JSON.
    """
    command = worker_command(module, *args)
    process = await asyncio.create_subprocess_exec(
        *command, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}): {err.decode(errors='replace')[-2000:]}")
    try:
        return json.loads(out)
    except json.JSONDecodeError as e:
        raise RuntimeError(f"{' '.join(command)} printed no JSON: {out[-500:]!r}") from e
