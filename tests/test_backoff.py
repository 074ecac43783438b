"""Pure backoff math: compute_delay tables and full jitter."""

from __future__ import annotations

import random

import pytest

from autogen_capacity.backoff import BackoffStrategy, compute_delay, jittered, total_delay


class TestComputeDelay:
    @pytest.mark.parametrize(
        ("strategy", "initial", "ceiling", "multiplier", "delays"),
        [
            ("exponential", 1.0, 30.0, 2.0, [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]),
            ("exponential", 0.5, 10.0, 3.0, [0.5, 1.5, 4.5, 10.0, 10.0, 10.0, 10.0]),
            ("exponential", 1.0, 1.0, 2.0, [1.0] * 7),
            ("exponential", 1.0, 30.0, 1.0, [1.0] * 7),
            ("exponential", 0.0, 30.0, 2.0, [0.0] * 7),
            ("linear", 1.0, 30.0, 2.0, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]),
            ("linear", 2.0, 5.0, 2.0, [2.0, 4.0, 5.0, 5.0, 5.0, 5.0, 5.0]),
            ("constant", 1.5, 30.0, 2.0, [1.5] * 7),
            ("constant", 3.0, 3.0, 9.0, [3.0] * 7),
        ],
    )
    def test_table(
        self, strategy: BackoffStrategy, initial: float, ceiling: float, multiplier: float, delays: list[float]
    ) -> None:
        """Retries 1..7 follow the strategy's formula, clamped at the ceiling."""
        computed = [
            compute_delay(k, strategy=strategy, initial=initial, ceiling=ceiling, multiplier=multiplier)
            for k in range(1, 8)
        ]

        assert computed == pytest.approx(delays)

    def test_multiplier_defaults_to_two(self) -> None:
        """The exponential strategy doubles unless told otherwise."""
        assert compute_delay(4, strategy="exponential", initial=1.0, ceiling=100.0) == 8.0

    def test_initial_above_ceiling_is_clamped(self) -> None:
        """No delay exceeds the ceiling, even the first."""
        assert compute_delay(1, strategy="constant", initial=10.0, ceiling=2.0) == 2.0

    @pytest.mark.parametrize("strategy", ["exponential", "linear", "constant"])
    @pytest.mark.parametrize("attempt", [1_000, 10**9, 10**30])
    @pytest.mark.parametrize("multiplier", [1.0, 1.5, 2, 10.0])
    def test_huge_attempt_is_finite_and_clamped(
        self, strategy: BackoffStrategy, attempt: int, multiplier: float
    ) -> None:
        """A huge retry number never overflows and stays within the ceiling."""
        delay = compute_delay(attempt, strategy=strategy, initial=0.1, ceiling=60.0, multiplier=multiplier)

        assert 0.0 < delay <= 60.0

    @pytest.mark.parametrize("attempt", [0, -3])
    def test_attempt_below_one_is_refused(self, attempt: int) -> None:
        """Retries are numbered from 1."""
        with pytest.raises(ValueError, match=f"attempt is 1-based, got {attempt}"):
            compute_delay(attempt, strategy="constant", initial=1.0, ceiling=1.0)


class TestJittered:
    def test_seeded_rng_is_repeatable(self) -> None:
        """Two generators with the same seed draw the same jitter."""
        first = [jittered(10.0, random.Random(0)) for _ in range(3)]

        assert first == [jittered(10.0, random.Random(0)) for _ in range(3)]
        assert first[0] == random.Random(0).uniform(0.0, 10.0)

    @pytest.mark.parametrize("delay", [0.0, 0.001, 1.0, 30.0])
    def test_draws_stay_within_zero_and_delay(self, delay: float) -> None:
        """Full jitter draws from [0, delay]."""
        rng = random.Random(0)

        assert all(0.0 <= jittered(delay, rng) <= delay for _ in range(500))

    def test_draws_spread_over_the_range(self) -> None:
        """Full jitter spreads callers over the whole range rather than bunching them."""
        rng = random.Random(0)
        draws = [jittered(1.0, rng) for _ in range(1000)]

        assert min(draws) < 0.05
        assert max(draws) > 0.95

    def test_without_rng_uses_the_module_generator(self) -> None:
        """Without an injected generator, jitter still stays in range."""
        assert 0.0 <= jittered(2.0) <= 2.0


class TestTotalDelay:
    @pytest.mark.parametrize("strategy", ["exponential", "linear", "constant"])
    @pytest.mark.parametrize(
        ("initial", "ceiling", "multiplier"), [(1.0, 30.0, 2.0), (0.1, 0.35, 1.5), (0.0, 5.0, 2.0), (2.0, 2.0, 1.0)]
    )
    @pytest.mark.parametrize("retries", [0, 1, 2, 7, 40])
    def test_equals_the_sum_of_each_delay(
        self, strategy: BackoffStrategy, initial: float, ceiling: float, multiplier: float, retries: int
    ) -> None:
        """The closed form equals the schedule summed delay by delay."""
        each = sum(
            compute_delay(k, strategy=strategy, initial=initial, ceiling=ceiling, multiplier=multiplier)
            for k in range(1, retries + 1)
        )

        total = total_delay(retries, strategy=strategy, initial=initial, ceiling=ceiling, multiplier=multiplier)

        assert total == pytest.approx(each)
