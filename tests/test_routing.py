"""The routing module's pure rules: rotation and the headroom rank."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from autogen_capacity.routing import rank_by_headroom, rotation

NAMES = st.lists(st.sampled_from("abcdefgh"), unique=True)
HEADROOM = st.sampled_from([0.0, 0.25, 0.5, 1.0])


@given(NAMES, st.data())
def test_ranked_by_headroom_highest_first_ties_in_rotation_order(names: list[str], data: st.DataObject) -> None:
    """Highest headroom first; equal headroom keeps the order given (the rotation); a name without a headroom
    counts as idle (1.0); names in the mapping but not in the order are ignored."""
    headroom = data.draw(st.dictionaries(st.sampled_from("abcdefghxyz"), HEADROOM))
    ranked = rank_by_headroom(names, headroom)

    assert sorted(ranked) == sorted(names)
    ranks = [headroom.get(name, 1.0) for name in ranked]
    assert ranks == sorted(ranks, reverse=True)
    for high, low in itertools.pairwise(ranked):
        if headroom.get(high, 1.0) == headroom.get(low, 1.0):
            assert names.index(high) < names.index(low)


@given(NAMES, st.integers(-20, 20))
def test_rotation_begins_at_the_index_modulo_the_length(names: list[str], start: int) -> None:
    rotated = rotation(names, start)

    assert sorted(rotated) == sorted(names)
    if names:
        assert rotated[0] == names[start % len(names)]
        assert rotated == names[start % len(names) :] + names[: start % len(names)]
