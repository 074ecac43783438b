"""The contract: validation, the ways to declare one, backoff schedules and aggregation."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from pydantic import ValidationError

from autogen_capacity import AgentCapacity

PROPOSAL_KWARGS: dict[str, Any] = {
    "max_concurrent": 3,
    "backoff_strategy": "exponential",
    "backoff_initial_ms": 1000,
    "backoff_ceiling_ms": 30000,
    "max_caller_retries": 5,
}


class TestValidation:
    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("max_concurrent", 0),
            ("max_concurrent", -1),
            ("rpm", 0),
            ("rpm", -0.5),
            ("tpm", 0),
            ("tpm", -10),
            ("max_queue", -1),
            ("key", ""),
            ("backoff_initial_ms", -1),
            ("backoff_ceiling_ms", -1),
            ("backoff_multiplier", 0.5),
            ("max_caller_retries", -1),
            ("backoff_strategy", "fibonacci"),
        ],
    )
    def test_out_of_range_value_names_the_field(self, field: str, value: object) -> None:
        """A value outside a field's range raises a ValidationError located at that field."""
        with pytest.raises(ValidationError) as exc_info:
            AgentCapacity.model_validate({field: value})

        assert [error["loc"] for error in exc_info.value.errors()] == [(field,)]

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("max_concurrent", 1),
            ("rpm", 0.01),
            ("tpm", 1),
            ("max_queue", 0),
            ("key", "shared-backend"),
            ("backoff_initial_ms", 0),
            ("backoff_multiplier", 1.0),
            ("max_caller_retries", 0),
        ],
    )
    def test_boundary_value_is_accepted(self, field: str, value: object) -> None:
        """The smallest value each field allows is accepted as given."""
        assert getattr(AgentCapacity.model_validate({field: value}), field) == value

    def test_ceiling_below_initial_is_refused(self) -> None:
        """A ceiling smaller than the initial delay is refused, naming both fields."""
        with pytest.raises(ValidationError, match=r"backoff_ceiling_ms \(500\) must be >= backoff_initial_ms \(1000\)"):
            AgentCapacity(backoff_initial_ms=1000, backoff_ceiling_ms=500)

    def test_ceiling_equal_to_initial_is_accepted(self) -> None:
        """A ceiling equal to the initial delay makes every delay the same."""
        cap = AgentCapacity(backoff_initial_ms=500, backoff_ceiling_ms=500, max_caller_retries=3)

        assert cap.backoff_schedule() == (0.5, 0.5, 0.5)

    def test_extra_field_is_forbidden(self) -> None:
        """An unknown field (a typo in config) is refused rather than ignored."""
        with pytest.raises(ValidationError) as exc_info:
            AgentCapacity.model_validate({"max_concurent": 3})

        assert exc_info.value.errors()[0]["type"] == "extra_forbidden"
        assert exc_info.value.errors()[0]["loc"] == ("max_concurent",)

    def test_contract_is_frozen(self) -> None:
        """A contract cannot be changed after it is built."""
        cap = AgentCapacity(max_concurrent=3)

        with pytest.raises(ValidationError, match="frozen"):
            cap.max_concurrent = 4  # type: ignore[misc]

    def test_contract_is_hashable(self) -> None:
        """Equal contracts hash equal, so they can key a dict."""
        assert hash(AgentCapacity(rpm=6)) == hash(AgentCapacity(rpm=6))

    def test_defaults_are_unbounded(self) -> None:
        """A contract with no limits declared is unbounded."""
        cap = AgentCapacity()

        assert (cap.max_concurrent, cap.rpm, cap.tpm, cap.max_queue, cap.key) == (None, None, None, None, None)
        assert not cap.is_bounded

    @pytest.mark.parametrize("field", ["max_concurrent", "rpm", "tpm"])
    def test_any_admission_limit_makes_it_bounded(self, field: str) -> None:
        """Declaring slots, rpm or tpm makes a contract bounded."""
        assert AgentCapacity.model_validate({field: 5}).is_bounded

    def test_max_queue_alone_is_not_bounded(self) -> None:
        """A queue limit alone admits everyone, so it does not bound the contract."""
        assert not AgentCapacity(max_queue=0).is_bounded


class TestProposal:
    def test_proposal_call_works_verbatim(self) -> None:
        """The seed proposal's call builds the contract it describes."""
        cap = AgentCapacity(
            max_concurrent=3,
            backoff_strategy="exponential",
            backoff_initial_ms=1000,
            backoff_ceiling_ms=30000,
            max_caller_retries=5,
        )

        assert cap.max_concurrent == 3
        assert cap.backoff_schedule() == (1.0, 2.0, 4.0, 8.0, 16.0)

    @pytest.mark.parametrize(
        "build",
        [
            pytest.param(lambda: AgentCapacity(**PROPOSAL_KWARGS), id="model"),
            pytest.param(lambda: AgentCapacity.model_validate(PROPOSAL_KWARGS), id="dict"),
            pytest.param(lambda: AgentCapacity.model_validate_json(json.dumps(PROPOSAL_KWARGS)), id="json"),
            pytest.param(
                lambda: AgentCapacity.model_validate(AgentCapacity(**PROPOSAL_KWARGS).model_dump()), id="dump-roundtrip"
            ),
            pytest.param(
                lambda: AgentCapacity.model_validate_json(AgentCapacity(**PROPOSAL_KWARGS).model_dump_json()),
                id="json-roundtrip",
            ),
            pytest.param(
                lambda: AgentCapacity.model_validate_json(
                    '{"max_concurrent": 3, "backoff_initial_ms": 1000, "max_caller_retries": 5}'
                ),
                id="json-with-defaults",
            ),
        ],
    )
    def test_every_way_to_declare_it_is_equal(self, build: Any) -> None:
        """A contract given as a model, a dict or JSON is the same contract."""
        assert build() == AgentCapacity(**PROPOSAL_KWARGS)


class TestBackoffSchedule:
    @pytest.mark.parametrize(
        ("kwargs", "schedule"),
        [
            ({"backoff_strategy": "exponential"}, (1.0, 2.0, 4.0, 8.0, 16.0)),
            ({"backoff_strategy": "exponential", "backoff_multiplier": 3}, (1.0, 3.0, 9.0, 27.0, 30.0)),
            ({"backoff_strategy": "exponential", "backoff_ceiling_ms": 5000}, (1.0, 2.0, 4.0, 5.0, 5.0)),
            ({"backoff_strategy": "exponential", "backoff_multiplier": 1}, (1.0, 1.0, 1.0, 1.0, 1.0)),
            ({"backoff_strategy": "linear"}, (1.0, 2.0, 3.0, 4.0, 5.0)),
            ({"backoff_strategy": "linear", "backoff_initial_ms": 250}, (0.25, 0.5, 0.75, 1.0, 1.25)),
            ({"backoff_strategy": "linear", "backoff_ceiling_ms": 2500}, (1.0, 2.0, 2.5, 2.5, 2.5)),
            ({"backoff_strategy": "constant"}, (1.0, 1.0, 1.0, 1.0, 1.0)),
            ({"backoff_strategy": "constant", "backoff_initial_ms": 0}, (0.0, 0.0, 0.0, 0.0, 0.0)),
            ({"max_caller_retries": 0}, ()),
            ({"max_caller_retries": 2}, (1.0, 2.0)),
        ],
    )
    def test_schedule(self, kwargs: dict[str, Any], schedule: tuple[float, ...]) -> None:
        """The un-jittered schedule follows the strategy and is clamped at the ceiling."""
        assert AgentCapacity(**kwargs).backoff_schedule() == pytest.approx(schedule)

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"backoff_strategy": "exponential"},
            {"backoff_strategy": "exponential", "backoff_multiplier": 1},
            {"backoff_strategy": "exponential", "backoff_initial_ms": 0},
            {"backoff_strategy": "linear"},
            {"backoff_strategy": "constant"},
        ],
    )
    @pytest.mark.parametrize("attempt", [100, 10_000, 10**9])
    def test_large_attempt_does_not_overflow(self, kwargs: dict[str, Any], attempt: int) -> None:
        """A very late retry still gets a finite delay no longer than the ceiling, computed at once."""
        delay = AgentCapacity(**kwargs).delay(attempt)

        assert 0.0 <= delay <= 30.0

    def test_large_exponential_attempt_is_the_ceiling(self) -> None:
        """An exponential schedule stays at the ceiling however late the retry."""
        assert AgentCapacity().delay(10**9) == 30.0

    def test_jittered_delay_is_deterministic_with_a_seeded_rng(self) -> None:
        """The same seed gives the same jittered delays."""
        cap = AgentCapacity()

        first = [cap.jittered_delay(k, random.Random(0)) for k in range(1, 6)]
        second = [cap.jittered_delay(k, random.Random(0)) for k in range(1, 6)]

        assert first == second
        assert first[0] == pytest.approx(random.Random(0).uniform(0.0, 1.0))

    @pytest.mark.parametrize("attempt", range(1, 8))
    def test_jittered_delay_is_within_zero_and_the_delay(self, attempt: int) -> None:
        """Full jitter draws each wait from [0, delay]."""
        cap, rng = AgentCapacity(), random.Random(0)

        draws = [cap.jittered_delay(attempt, rng) for _ in range(200)]

        assert all(0.0 <= d <= cap.delay(attempt) for d in draws)
        assert len(set(draws)) > 1

    def test_no_jitter_returns_the_delay(self) -> None:
        """With backoff_jitter=False the wait is exactly the scheduled delay."""
        cap = AgentCapacity(backoff_jitter=False)

        assert [cap.jittered_delay(k, random.Random(0)) for k in range(1, 6)] == list(cap.backoff_schedule())

    @pytest.mark.parametrize("attempt", [0, -1])
    def test_attempt_is_one_based(self, attempt: int) -> None:
        """Retry numbers start at 1."""
        with pytest.raises(ValueError, match="1-based"):
            AgentCapacity().delay(attempt)


class TestAggregate:
    @pytest.mark.parametrize(
        ("mode", "members", "expected"),
        [
            (
                "pool",
                [
                    AgentCapacity(max_concurrent=2, rpm=6, tpm=100, max_queue=1),
                    AgentCapacity(max_concurrent=3, rpm=4.5, tpm=50, max_queue=2),
                ],
                {"max_concurrent": 5, "rpm": 10.5, "tpm": 150, "max_queue": 3},
            ),
            (
                "pool",
                [AgentCapacity(max_concurrent=2, rpm=6), AgentCapacity(max_concurrent=3)],
                {"max_concurrent": 5, "rpm": None, "tpm": None, "max_queue": None},
            ),
            (
                "pool",
                [AgentCapacity(max_concurrent=2), None],
                {"max_concurrent": None, "rpm": None, "tpm": None, "max_queue": None},
            ),
            (
                "pipeline",
                [
                    AgentCapacity(max_concurrent=2, rpm=6, tpm=100, max_queue=1),
                    AgentCapacity(max_concurrent=3, rpm=4.5, tpm=50, max_queue=2),
                ],
                {"max_concurrent": 2, "rpm": 4.5, "tpm": 50, "max_queue": 1},
            ),
            (
                "pipeline",
                [AgentCapacity(max_concurrent=2), AgentCapacity(rpm=6), None],
                {"max_concurrent": 2, "rpm": 6, "tpm": None, "max_queue": None},
            ),
            (
                "pipeline",
                [AgentCapacity(), None],
                {"max_concurrent": None, "rpm": None, "tpm": None, "max_queue": None},
            ),
        ],
    )
    def test_limits(self, mode: Any, members: list[AgentCapacity | None], expected: dict[str, object]) -> None:
        """A pool sums the limits (unbounded when any member is); a pipeline takes the smallest bounded one."""
        result = AgentCapacity.aggregate(members, mode)

        assert result is not None
        assert {field: getattr(result, field) for field in expected} == expected

    def test_default_mode_is_pool(self) -> None:
        """Without a mode, members form a pool."""
        result = AgentCapacity.aggregate([AgentCapacity(max_concurrent=2), AgentCapacity(max_concurrent=3)])

        assert result is not None
        assert result.max_concurrent == 5

    @pytest.mark.parametrize("mode", ["pool", "pipeline"])
    def test_backoff_from_the_most_conservative_member(self, mode: Any) -> None:
        """Backoff comes from the member that waits longest, with the fewest retries of any member."""
        patient = AgentCapacity(
            backoff_strategy="linear", backoff_initial_ms=2000, backoff_ceiling_ms=60000, max_caller_retries=8
        )
        eager = AgentCapacity(backoff_initial_ms=100, backoff_ceiling_ms=1000, max_caller_retries=2)

        result = AgentCapacity.aggregate([eager, patient], mode)

        assert result is not None
        assert (result.backoff_strategy, result.backoff_initial_ms, result.backoff_ceiling_ms) == (
            "linear",
            2000,
            60000,
        )
        assert result.max_caller_retries == 2

    @pytest.mark.parametrize("mode", ["pool", "pipeline"])
    def test_cap_wins_field_by_field(self, mode: Any) -> None:
        """The team's declared contract caps each limit: the smaller value wins, an unbounded one never does."""
        members = [
            AgentCapacity(max_concurrent=4, rpm=30, max_queue=5),
            AgentCapacity(max_concurrent=4, rpm=30, max_queue=5),
        ]
        cap = AgentCapacity(max_concurrent=3, rpm=120, tpm=1000)

        result = AgentCapacity.aggregate(members, mode, cap=cap)

        assert result is not None
        expected = {"pool": (3, 60, 1000, 10), "pipeline": (3, 30, 1000, 5)}[mode]
        assert (result.max_concurrent, result.rpm, result.tpm, result.max_queue) == expected

    def test_cap_supplies_backoff_and_key(self) -> None:
        """The team's declared backoff fields and key replace the members'."""
        member = AgentCapacity(backoff_initial_ms=5000, backoff_ceiling_ms=90000, max_caller_retries=1)
        cap = AgentCapacity(
            key="team",
            backoff_strategy="constant",
            backoff_initial_ms=10,
            backoff_ceiling_ms=20,
            backoff_multiplier=1.5,
            backoff_jitter=False,
            max_caller_retries=9,
        )

        result = AgentCapacity.aggregate([member], cap=cap)

        assert result is not None
        backoff = ("key", "backoff_strategy", "backoff_initial_ms", "backoff_ceiling_ms", "backoff_multiplier")
        assert {f: getattr(result, f) for f in backoff} == {f: getattr(cap, f) for f in backoff}
        assert (result.backoff_jitter, result.max_caller_retries) == (False, 9)

    def test_members_keys_are_dropped(self) -> None:
        """The aggregate is the team's contract, so it never takes a member's key."""
        result = AgentCapacity.aggregate([AgentCapacity(key="backend")])

        assert result is not None
        assert result.key is None

    @pytest.mark.parametrize("members", [[], [None], [None, None]])
    @pytest.mark.parametrize("cap", [None, AgentCapacity(max_concurrent=2)])
    def test_no_contracts_gives_the_cap(self, members: list[AgentCapacity | None], cap: AgentCapacity | None) -> None:
        """With no member contracts, the team's contract is the declared one (or none)."""
        assert AgentCapacity.aggregate(members, cap=cap) == cap

    def test_accepts_any_iterable(self) -> None:
        """Members may come from a generator."""
        result = AgentCapacity.aggregate(AgentCapacity(max_concurrent=n) for n in (1, 2, 3))

        assert result is not None
        assert result.max_concurrent == 6


class TestSharedKeys:
    """A key is one backend: members sharing it count once in the aggregate."""

    @pytest.mark.parametrize(("mode", "slots"), [("pool", 8), ("pipeline", 8)])
    def test_two_members_on_one_key_count_once(self, mode: Any, slots: int) -> None:
        """Two members declaring 8 slots on the key ``gpt-4o`` give the team 8 slots, not 16."""
        shared = AgentCapacity(max_concurrent=8, rpm=60, key="gpt-4o")

        result = AgentCapacity.aggregate([shared, shared], mode)

        assert result is not None
        assert (result.max_concurrent, result.rpm) == (slots, 60)

    def test_shared_key_adds_to_other_keys(self) -> None:
        """A shared key counts once next to members on keys of their own."""
        members = [
            AgentCapacity(max_concurrent=8, key="gpt-4o"),
            AgentCapacity(max_concurrent=8, key="gpt-4o"),
            AgentCapacity(max_concurrent=2),
            AgentCapacity(max_concurrent=3, key="mini"),
        ]

        result = AgentCapacity.aggregate(members)

        assert result is not None
        assert result.max_concurrent == 13

    def test_disagreeing_contracts_on_one_key_count_the_tightest(self) -> None:
        """Members that disagree about a shared key count its smallest declared limit, field by field."""
        members = [
            AgentCapacity(max_concurrent=8, key="gpt-4o"),
            AgentCapacity(max_concurrent=4, rpm=30, key="gpt-4o"),
            AgentCapacity(max_concurrent=1, rpm=10),
        ]

        result = AgentCapacity.aggregate(members)

        assert result is not None
        assert (result.max_concurrent, result.rpm) == (5, 40)

    def test_members_without_a_key_are_separate_backends(self) -> None:
        """Equal contracts without a key are distinct backends (each member's own name)."""
        result = AgentCapacity.aggregate([AgentCapacity(max_concurrent=2), AgentCapacity(max_concurrent=2)])

        assert result is not None
        assert result.max_concurrent == 4
