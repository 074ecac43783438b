"""The preference order the engine tests pass to ``Admission.admit``: the team's headroom routing, without a team."""

from __future__ import annotations

from collections.abc import Mapping

from autogen_capacity._engine import Candidate
from autogen_capacity.ledger import KeyStatus
from autogen_capacity.routing import rank_by_headroom


async def by_headroom(open_: list[Candidate], statuses: Mapping[str, KeyStatus]) -> list[Candidate]:
    """``open_`` by headroom, highest first; ties keep their order in ``open_`` (as headroom routing ranks)."""
    ranked = rank_by_headroom([c.name for c in open_], {n: s.headroom for n, s in statuses.items()})
    return sorted(open_, key=lambda c: ranked.index(c.name))
