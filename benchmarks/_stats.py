"""Small statistics and machine-description helpers shared by the scenarios."""

from __future__ import annotations

import math
import os
import platform
import random
import statistics
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

__all__ = ["jain", "machine", "median", "median_ci", "percentile", "ratio_summary"]

_PACKAGES = ("autogen-agentchat", "autogen-core", "autogen-capacity", "redis", "tenacity", "pydantic")


def median(values: Sequence[float]) -> float:
    """The median, or ``nan`` for no values."""
    return statistics.median(values) if values else math.nan


def median_ci(groups: Sequence[Sequence[float]], level: float = 0.95, resamples: int = 2000) -> tuple[float, float]:
    """A ``level`` confidence interval of the median of the pooled ``groups`` (one group per process), by a cluster
    bootstrap: whole groups are drawn with replacement, so the spread between processes counts, not only within.
    Seeded: the same groups give the same interval."""
    rng = random.Random(0)
    medians = sorted(
        statistics.median([value for group in rng.choices(groups, k=len(groups)) for value in group])
        for _ in range(resamples)
    )
    tail = (1 - level) / 2
    return medians[int(tail * resamples)], medians[min(int((1 - tail) * resamples), resamples - 1)]


def ratio_summary(groups: Sequence[Sequence[float]]) -> dict[str, Any]:
    """What a scenario reports of a contestant's ratios to its baseline, one group per process: the median of
    all of them, their range, each process's median and the median's 95 % interval."""
    pooled = [value for group in groups for value in group]
    return {
        "ratio_to_round_robin": median(pooled),
        "ratio_min": min(pooled),
        "ratio_max": max(pooled),
        "process_medians": [median(group) for group in groups],
        "ratio_ci95": list(median_ci(groups)),
    }


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
