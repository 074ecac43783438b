"""Pure routing functions: rotation order and headroom ranking. No I/O, no clock."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

__all__ = ["Routing", "rank_by_headroom", "rotation"]

Routing = Literal["headroom", "round_robin", "selector"]
"""How a capacity-aware team orders the candidates for a turn."""


def rotation(names: Sequence[str], start: int) -> list[str]:
    """``names`` in round-robin order, beginning at index ``start`` (taken modulo the length)."""
    if not names:
        return []
    start %= len(names)
    return [*names[start:], *names[:start]]


def rank_by_headroom(ordered: Sequence[str], headroom: Mapping[str, float]) -> list[str]:
    """``ordered`` sorted by headroom, highest first; ties keep their order in ``ordered`` (the rotation),
    so equal members take turns. A name missing from ``headroom`` counts as idle (1.0)."""
    ranks = {**dict.fromkeys(ordered, 1.0), **headroom}
    return sorted(ordered, key=ranks.__getitem__, reverse=True)  # a reversed sort keeps ties in order
