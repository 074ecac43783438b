"""Deadlines: a run's limit from real AutoGen termination conditions, service times, the expected wait and the
fail-fast rule, by tables."""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable

import pytest
from autogen_agentchat.base import TerminationCondition
from autogen_agentchat.conditions import (
    ExternalTermination,
    MaxMessageTermination,
    TextMentionTermination,
    TimeoutTermination,
)

from autogen_capacity.deadlines import (
    AUTOGEN_ATTRIBUTES,
    DEFAULT_ALPHA,
    FAIL_FAST_MARGIN,
    ServiceTimes,
    deadline_from,
    ewma,
    expected_wait,
    should_fail_fast,
)

CONDITIONS: list[tuple[str, Callable[[], TerminationCondition | None], float | None]] = [
    ("none", lambda: None, None),
    ("timeout", lambda: TimeoutTermination(5), 5.0),
    ("max-messages", lambda: MaxMessageTermination(3), None),
    ("external", lambda: ExternalTermination(), None),
    ("or", lambda: TimeoutTermination(5) | MaxMessageTermination(3), 5.0),
    ("or-two-timeouts", lambda: TimeoutTermination(5) | TimeoutTermination(3), 3.0),
    ("or-no-timeout", lambda: MaxMessageTermination(3) | TextMentionTermination("x"), None),
    ("and-alone-bounds-nothing", lambda: TimeoutTermination(5) & TextMentionTermination("x"), None),
    ("and-two-timeouts", lambda: TimeoutTermination(5) & TimeoutTermination(10), 10.0),
    ("nested-or", lambda: (TimeoutTermination(10) | MaxMessageTermination(3)) | TimeoutTermination(7), 7.0),
    (
        "and-of-ors",
        lambda: (
            (TimeoutTermination(5) | MaxMessageTermination(3)) & (TimeoutTermination(8) | TextMentionTermination("x"))
        ),
        8.0,
    ),
    (
        "or-of-and",
        lambda: (TimeoutTermination(5) & TextMentionTermination("x")) | TimeoutTermination(20),
        20.0,
    ),
    (
        "and-with-unbounded-or",
        lambda: (TimeoutTermination(5) | MaxMessageTermination(3)) & TextMentionTermination("x"),
        None,
    ),
    ("fractional", lambda: TimeoutTermination(0.25) | MaxMessageTermination(3), 0.25),
]


def _loaded(condition: TerminationCondition | None) -> TerminationCondition | None:
    """The same condition as a team loaded from its component config has it."""
    if condition is None:
        return None
    return TerminationCondition.load_component(condition.dump_component())


class TestDeadlineFrom:
    @pytest.mark.parametrize("given", ["built", "loaded-from-config"])
    @pytest.mark.parametrize(("make", "expected"), [c[1:] for c in CONDITIONS], ids=[c[0] for c in CONDITIONS])
    def test_table(self, make: Callable[[], TerminationCondition | None], expected: float | None, given: str) -> None:
        """Or takes the smallest timeout among its children, And bounds the run only when every child has a
        timeout (then the largest), nested combinations are followed, other conditions bound nothing."""
        condition = make() if given == "built" else _loaded(make())

        assert deadline_from(condition) == expected

    @pytest.mark.parametrize(
        ("make", "deadline_s", "expected"),
        [
            (lambda: None, 12.0, 12.0),
            (lambda: MaxMessageTermination(3), 12.0, 12.0),
            (lambda: TimeoutTermination(5) | MaxMessageTermination(3), 12.0, 5.0),
            (lambda: TimeoutTermination(30), 12.0, 12.0),
            (lambda: TimeoutTermination(5) & TextMentionTermination("x"), 12.0, 12.0),
        ],
    )
    def test_team_deadline(
        self, make: Callable[[], TerminationCondition | None], deadline_s: float, expected: float
    ) -> None:
        """The team's deadline_s and the condition's limit: the smaller wins."""
        assert deadline_from(make(), deadline_s=deadline_s) == expected

    @pytest.mark.parametrize("deadline_s", [0.0, -1.0, math.nan])
    def test_team_deadline_must_be_positive(self, deadline_s: float) -> None:
        """deadline_s of zero, below zero or NaN is refused."""
        with pytest.raises(ValueError, match="deadline_s"):
            deadline_from(None, deadline_s=deadline_s)

    def test_autogen_attributes_are_there(self) -> None:
        """The private attributes read on AutoGen's combinations exist on live objects (else: what moved)."""
        live = {
            "AndTerminationCondition": TimeoutTermination(1) & MaxMessageTermination(1),
            "OrTerminationCondition": TimeoutTermination(1) | MaxMessageTermination(1),
        }
        moved = []
        for owner, attributes in AUTOGEN_ATTRIBUTES.items():
            module_name, _, class_name = owner.rpartition(".")
            assert isinstance(live[class_name], getattr(importlib.import_module(module_name), class_name))
            moved += [f"{owner}.{name}" for name in attributes if not hasattr(live[class_name], name)]

        assert moved == []


class TestServiceTimes:
    def test_unknown_until_observed(self) -> None:
        """No estimate before the first lease on a key is released; the first observation is the estimate."""
        times = ServiceTimes()

        assert times.per_slot("a") is None
        times.observe("a", 0.2)
        assert times.per_slot("a") == 0.2
        assert times.per_slot("b") is None

    def test_weighted_mean(self) -> None:
        """Each observation moves the estimate alpha of the way towards it; keys are kept apart."""
        times = ServiceTimes(alpha=0.5)
        for seconds in (1.0, 2.0, 4.0):
            times.observe("a", seconds)
        times.observe("b", 9.0)

        assert times.per_slot("a") == pytest.approx(2.75)
        assert times.snapshot() == {"a": pytest.approx(2.75), "b": 9.0}
        assert "alpha=0.5" in repr(times)

    def test_follows_a_change(self) -> None:
        """After a backend slows down, the estimate converges to the new service time."""
        times = ServiceTimes()
        for _ in range(10):
            times.observe("a", 0.1)
        for _ in range(40):
            times.observe("a", 1.0)

        assert times.per_slot("a") == pytest.approx(1.0, rel=0.01)

    def test_forget(self) -> None:
        """forget() drops a key's estimate."""
        times = ServiceTimes()
        times.observe("a", 1.0)
        times.forget("a")
        times.forget("never-seen")

        assert times.per_slot("a") is None

    @pytest.mark.parametrize("seconds", [-0.1, math.inf, math.nan])
    def test_invalid_observation(self, seconds: float) -> None:
        """A negative, infinite or NaN hold time is refused."""
        with pytest.raises(ValueError, match="non-negative"):
            ServiceTimes().observe("a", seconds)

    @pytest.mark.parametrize("alpha", [0.0, -0.5, 1.5, math.nan])
    def test_invalid_alpha(self, alpha: float) -> None:
        """alpha must be in (0, 1]."""
        with pytest.raises(ValueError, match="alpha"):
            ServiceTimes(alpha=alpha)

    @pytest.mark.parametrize(
        ("previous", "sample", "alpha", "expected"),
        [(None, 3.0, 0.2, 3.0), (1.0, 3.0, 0.5, 2.0), (1.0, 3.0, 1.0, 3.0), (2.0, 1.0, DEFAULT_ALPHA, 1.8)],
    )
    def test_ewma(self, previous: float | None, sample: float, alpha: float, expected: float) -> None:
        """The update a shared ledger's script must reproduce."""
        assert ewma(previous, sample, alpha) == pytest.approx(expected)


class TestExpectedWait:
    @pytest.mark.parametrize(
        ("position", "slots", "per_slot_s", "expected"),
        [
            (0, 1, 0.2, 0.2),
            (1, 1, 0.2, 0.4),
            (9, 1, 0.2, 2.0),
            (0, 4, 0.2, 0.2),
            (3, 4, 0.2, 0.2),
            (4, 4, 0.2, 0.4),
            (127, 4, 0.2, 6.4),
            (5, 3, 0.0, 0.0),
            (0, 1, 60 / 30, 2.0),
        ],
    )
    def test_table(self, position: int, slots: int, per_slot_s: float, expected: float) -> None:
        """ceil((position + 1) / slots) rounds of releases, each per_slot_s long."""
        assert expected_wait(position, slots, per_slot_s) == pytest.approx(expected)

    @pytest.mark.parametrize(("position", "slots", "per_slot_s"), [(-1, 1, 1.0), (0, 0, 1.0), (0, 1, -1.0)])
    def test_invalid(self, position: int, slots: int, per_slot_s: float) -> None:
        """A negative position or service time, or no slots, is refused."""
        with pytest.raises(ValueError, match="position"):
            expected_wait(position, slots, per_slot_s)


class TestShouldFailFast:
    @pytest.mark.parametrize(
        ("expected_s", "remaining_s", "margin", "fail"),
        [
            pytest.param(12.0, 1.0, FAIL_FAST_MARGIN, True, id="far-beyond"),
            pytest.param(1.2, 1.0, FAIL_FAST_MARGIN, False, id="within-margin"),
            pytest.param(1.25, 1.0, FAIL_FAST_MARGIN, False, id="at-margin"),
            pytest.param(1.26, 1.0, FAIL_FAST_MARGIN, True, id="past-margin"),
            pytest.param(1.01, 1.0, 0.0, True, id="no-margin"),
            pytest.param(0.5, 1.0, FAIL_FAST_MARGIN, False, id="fits"),
            pytest.param(None, 1.0, FAIL_FAST_MARGIN, False, id="unknown-service-time"),
            pytest.param(100.0, None, FAIL_FAST_MARGIN, False, id="no-deadline"),
            pytest.param(0.0, 0.0, FAIL_FAST_MARGIN, True, id="no-time-left"),
            pytest.param(None, -1.0, FAIL_FAST_MARGIN, True, id="past-the-deadline"),
            pytest.param(math.inf, 1e9, FAIL_FAST_MARGIN, True, id="never"),
        ],
    )
    def test_table(self, expected_s: float | None, remaining_s: float | None, margin: float, fail: bool) -> None:
        """Fail fast when no time is left, or the expected wait exceeds the time left by more than the margin;
        never on an unknown estimate or without a deadline."""
        assert should_fail_fast(expected_s, remaining_s, margin=margin) is fail

    def test_default_margin(self) -> None:
        """The default margin is 25%."""
        assert FAIL_FAST_MARGIN == 0.25
        assert should_fail_fast(1.25, 1.0) is False
        assert should_fail_fast(1.3, 1.0) is True

    def test_negative_margin(self) -> None:
        """A negative margin is refused."""
        with pytest.raises(ValueError, match="margin"):
            should_fail_fast(1.0, 1.0, margin=-0.1)
