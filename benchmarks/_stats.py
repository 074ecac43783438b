"""Small statistics and machine-description helpers shared by the scenarios."""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

__all__ = ["jain", "machine", "median", "percentile"]

_PACKAGES = ("autogen-agentchat", "autogen-core", "autogen-capacity", "redis", "tenacity", "pydantic")


def median(values: Sequence[float]) -> float:
    """The median, or ``nan`` for no values."""
    return statistics.median(values) if values else math.nan


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by nearest rank, or ``nan`` for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(math.ceil(q / 100 * len(ordered)), 1)
    return ordered[min(rank, len(ordered)) - 1]


def jain(values: Sequence[float]) -> float:
    """Jain's fairness index: 1 when all values are equal, ``1/n`` when one value takes everything."""
    total = sum(values)
    squares = sum(v * v for v in values)
    return total * total / (len(values) * squares) if squares else math.nan


def machine() -> dict[str, object]:
    """Where the numbers were taken: platform, CPU count, load, Python and package versions."""
    packages: dict[str, str] = {}
    for name in _PACKAGES:
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = "not installed"
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    return {
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average": [round(x, 2) for x in load],
        "python": sys.version.split()[0],
        "packages": packages,
    }
