"""Issue 17: the live-limit algorithm (:mod:`autogen_capacity.adaptive`), by table and by simulation.

The simulations (``tests/adaptive_sim.py``) are deterministic: a seeded RNG and a simulated clock, no sleeps.
A provider has a true concurrency limit ``L`` and answers the request past it with a fast 429 (cooling the key
down for 1 s, as Retry-After would); callers declare ``2L``. Latencies are log-normal around 1 s.
"""

from __future__ import annotations

import math

import pytest

from adaptive_sim import Outcome, Simulation
from autogen_capacity.adaptive import AdaptiveParams, LimitChange, LiveLimit


def fill(live: LiveLimit, now: float, latency: float = 1.0) -> None:
    """One window at the limit: as many successes as the limit, each admitted with the key full."""
    for _ in range(live.limit):
        live.on_admitted(live.limit, now)
        live.on_success(latency, live.limit, now + latency, admitted_at=now)


class TestLiveLimitBounds:
    def test_starts_at_the_ceiling(self) -> None:
        """Declared values are the start unless the user gives one."""
        assert LiveLimit(8).limit == 8
        assert LiveLimit(8, initial=3).limit == 3

    @pytest.mark.parametrize(("ceiling", "initial"), [(0, None), (4, 0), (4, 5)])
    def test_rejects_bad_bounds(self, ceiling: int, initial: int | None) -> None:
        """A ceiling below 1, or a start outside ``[1, ceiling]``, is refused."""
        with pytest.raises(ValueError, match="must be"):
            LiveLimit(ceiling, initial=initial)

    @pytest.mark.parametrize(
        "params",
        [
            {"backoff_ratio": 1.0},
            {"min_backoff_ratio": 0.8, "backoff_ratio": 0.7},
            {"growth_tolerance": 3.0},
            {"short_window": 0},
        ],
    )
    def test_rejects_bad_params(self, params: dict[str, float]) -> None:
        """Constants that cannot converge are refused."""
        with pytest.raises(ValueError, match=r"need|must"):
            AdaptiveParams(**params)  # type: ignore[arg-type]

    def test_never_below_one(self) -> None:
        """Throttles without end leave the limit at 1."""
        live = LiveLimit(4)
        for i in range(50):
            live.on_throttled(float(i), in_flight=1, admitted_at=float(i) - 0.5)
        assert live.limit == 1

    def test_never_above_the_ceiling(self) -> None:
        """Windows at the limit without overload do not pass the ceiling."""
        live = LiveLimit(3)
        for i in range(50):
            fill(live, float(i))
        assert live.limit == 3

    def test_ceiling_moves(self) -> None:
        """A lower ceiling takes the limit down with it; a higher one leaves it to climb."""
        live = LiveLimit(8)
        live.set_ceiling(5, now=1.0)
        assert (live.limit, live.last_change) == (5, LimitChange(1.0, 8, 5, "ceiling"))
        live.set_ceiling(10, now=2.0)
        assert live.limit == 5
        with pytest.raises(ValueError, match="ceiling"):
            live.set_ceiling(0, now=3.0)


class TestThrottled:
    @pytest.mark.parametrize(
        ("ceiling", "in_flight", "expected"),
        [
            (8, None, 5),  # 8 * 0.7
            (8, 8, 5),  # the hint says no more than 7
            (8, 5, 4),  # served at most 4: min(5.6, 4), not below 8 * 0.5
            (8, 2, 4),  # the hint never takes more than half
            (10, None, 7),
            (2, None, 1),
            (1, None, 1),
        ],
    )
    def test_drops_multiplicatively(self, ceiling: int, in_flight: int | None, expected: int) -> None:
        """A throttle drops the limit by ``backoff_ratio``, or to below the in-flight count it was admitted at,
        never by more than half."""
        live = LiveLimit(ceiling)
        live.on_throttled(1.0, in_flight=in_flight, admitted_at=0.0)
        assert live.limit == expected
        assert live.throttles == 1
        if expected != ceiling:
            assert live.last_change == LimitChange(1.0, ceiling, expected, "throttled")
            assert live.changed_at == 1.0

    def test_once_per_burst_by_admission_time(self) -> None:
        """429s to requests admitted before the drop are the same burst; one admitted after it drops again."""
        live = LiveLimit(20)
        for _ in range(20):
            live.on_admitted(20, 0.0)
        for i in range(10):
            live.on_throttled(0.1 + i / 100, admitted_at=0.0)
        assert (live.limit, live.throttles) == (14, 10)
        live.on_throttled(0.5, admitted_at=0.2)
        assert live.limit == 9

    def test_once_per_burst_without_admission_time(self) -> None:
        """Without ``admitted_at``, a burst lasts until the requests in flight at the drop have answered and
        one recent latency has passed."""
        live = LiveLimit(10)
        fill(live, 0.0, latency=2.0)  # a recent latency of 2 s
        for _ in range(4):
            live.on_admitted(4, 10.0)
        live.on_throttled(10.1)
        assert live.limit == 7
        for t in (10.2, 10.3, 10.4):  # the other three in flight at the drop
            live.on_throttled(t)
        assert live.limit == 7
        live.on_throttled(11.0)  # all answered, but within a round trip of the drop
        assert live.limit == 7
        live.on_throttled(12.2)
        assert live.limit == 4


class TestClimb:
    def test_climbs_one_step_per_window_at_the_limit(self) -> None:
        """After a lone overload, each window at the limit without overload steps it up by one."""
        live = LiveLimit(10)
        live.on_throttled(0.0, admitted_at=-1.0)
        assert live.limit == 7
        fill(live, 1.0)
        assert live.last_change == LimitChange(2.0, 7, 8, "probe")
        fill(live, 3.0)
        assert live.limit == 9

    def test_no_growth_below_the_limit(self) -> None:
        """A key used below its live limit does not grow (no upward drift)."""
        live = LiveLimit(10, initial=4)
        for i in range(100):
            live.on_admitted(3, float(i))
            live.on_success(1.0, 3, i + 1.0, admitted_at=float(i))
        assert live.limit == 4

    def test_answers_from_before_a_drop_do_not_count(self) -> None:
        """Successes of requests admitted under the old, higher limit do not climb the new one."""
        live = LiveLimit(10)
        live.on_throttled(1.0, admitted_at=0.5)
        for _ in range(30):
            live.on_success(1.0, 10, 1.5, admitted_at=0.5)
        assert live.limit == 7

    def test_failed_probe_retreats_and_waits_longer(self) -> None:
        """A level that throttles right after the step up is left for the last level that served, and probed
        again after twice as many windows each time, up to ``max_probe_patience``."""
        live = LiveLimit(10, initial=3)
        now = 0.0
        waits = []
        for _ in range(7):
            windows = 0
            while live.limit == 3:
                fill(live, now)
                now += 2
                windows += 1
            assert live.limit == 4
            live.on_throttled(now, in_flight=4, admitted_at=now - 0.1)
            assert live.last_change is not None
            assert live.last_change.reason == "probe_failed"
            assert live.limit == 3
            waits.append(windows)
            now += 1
        assert waits == [1, 2, 4, 8, 16, 16, 16]

    def test_a_probe_that_serves_clears_the_strikes(self) -> None:
        """When the level that throttled serves a full window, the climb is fast again."""
        live = LiveLimit(10, initial=3)
        fill(live, 0.0)
        live.on_throttled(2.0, in_flight=4, admitted_at=1.9)  # 4 failed
        fill(live, 4.0)
        assert live.limit == 3  # twice the patience below the level that failed
        fill(live, 6.0)
        assert live.limit == 4
        fill(live, 8.0)  # 4 served a window: one window per step again
        assert live.limit == 5
        fill(live, 10.0)
        assert live.limit == 6


class TestLatency:
    def test_backs_off_when_latency_rises_under_load(self) -> None:
        """Latency well above its baseline while the key is full drops the limit by the gradient."""
        live = LiveLimit(10)
        for i in range(20):
            fill(live, i * 2.0, latency=1.0)
        assert live.limit == 10
        now = 50.0
        while live.last_change is None:
            live.on_admitted(10, now)
            live.on_success(4.0, 10, now + 4, admitted_at=now)
            now += 0.5
        assert live.last_change.reason == "latency"
        assert 5 <= live.limit < 10

    def test_latency_alone_on_the_key_does_not_drop(self) -> None:
        """A slow answer to a request alone on the key is the provider's pace, not our queue."""
        live = LiveLimit(10, initial=4)
        for i in range(20):
            live.on_success(1.0, 1, float(i))
        for i in range(20):
            live.on_success(5.0, 1, 20.0 + i)
        assert live.limit == 4

    def test_no_latency_signal_before_warmup(self) -> None:
        """Fewer than ``warmup`` samples never drop or hold the limit."""
        live = LiveLimit(10)
        live.on_success(1.0, 10, 1.0)
        live.on_success(50.0, 10, 2.0)
        assert live.limit == 10
        assert live.latency is not None


def simulate(limit: int | float, ceiling: int, until: float, seed: int = 0, **kwargs: object) -> Outcome:
    true_limit = kwargs.pop("true_limit", lambda t: limit)
    return Simulation(LiveLimit(ceiling), true_limit, clients=3 * ceiling, seed=seed, **kwargs).run(until)  # type: ignore[arg-type]


class TestSimulatedProvider:
    @pytest.mark.parametrize("hints", [True, False], ids=["admitted-at", "no-hints"])
    @pytest.mark.parametrize("true_limit", [2, 5, 20])
    def test_converges_from_a_cold_start(self, true_limit: int, hints: bool) -> None:
        """Declaring twice the true limit, the live limit spends >= 99% of the time after the first minute in
        ``[L-1, L]``, never passes ``L+1`` (a probe, answered with one 429), and 429s fall below 1/(8L)."""
        out = simulate(true_limit, 2 * true_limit, 600, pass_admitted_at=hints, pass_in_flight=hints)
        assert out.time_share(max(1, true_limit - 1), true_limit, 60, 600) >= 0.99
        assert max(out.limits_between(60, 600)) <= true_limit + 1
        assert out.throttle_rate(60) <= 1 / (8 * true_limit)
        assert out.calls / out.turns <= 1.05

    def test_issue_target_true_limit_3_declared_8(self) -> None:
        """The issue's benchmark shape: over a burst from a cold start, 429s stay under 5% of turns and calls per
        turn under 1.05 (static 8-vs-3 contracts measured 1.37 and 2.37)."""
        for seed in range(5):
            out = simulate(3, 8, 120, seed=seed)
            assert out.throttled / out.turns <= 0.05
            assert out.calls / out.turns <= 1.05

    def test_drops_once_per_burst(self) -> None:
        """The cold start's first burst brings L 429s at once, and one drop."""
        out = simulate(20, 40, 1.0)
        assert out.throttles_between(0, 0.1) == 20
        assert out.trace == [(0.0, 40), (pytest.approx(0.05), 20)]

    def test_follows_the_true_limit_up_and_down(self) -> None:
        """True limit 3, then 6 (under the ceiling of 8): >= 5 within 30 s; then 2: the 429 burst ends within
        5 s, and afterwards only rare probes (at most one per 10 s) are answered with a 429."""

        def true_limit(t: float) -> int:
            return 3 if t < 300 else 6 if t < 600 else 2

        for seed in range(5):
            out = simulate(0, 8, 900, seed=seed, true_limit=true_limit)
            reached = next(t for t, v in out.trace if t >= 300 and v >= 5)
            assert reached - 300 <= 30
            assert out.throttles_between(605, 615) <= 1
            assert out.throttles_between(605, 900) <= 295 / 10
            assert max(out.limits_between(610, 900)) <= 3

    def test_backs_off_on_latency_without_429s(self) -> None:
        """A provider that never throttles but slows with load (processor sharing over 3 from t=100): the limit
        backs off from 10 to at most 6 most of the next 100 s."""
        for seed in range(3):
            out = simulate(1000, 10, 200, seed=seed, soft_limit=lambda t: 100 if t < 100 else 3)
            assert out.throttled == 0
            assert out.limit_at(99) == 10
            assert out.time_share(1, 6, 110, 200) >= 0.7

    def test_recovers_from_a_provider_slower_for_everyone(self) -> None:
        """A provider 3x slower at any load first looks like our queue; the baseline learns it from requests
        alone on the key, and the limit is back at its ceiling within 500 s."""
        out = simulate(1000, 10, 1000, slowdown=lambda t: 1 if t < 100 else 3)
        assert min(out.limits_between(100, 200)) < 10
        assert out.time_share(9, 10, 600, 1000) >= 0.9

    def test_deterministic(self) -> None:
        """The same seed gives the same trajectory."""
        first, second = simulate(5, 10, 120, seed=7), simulate(5, 10, 120, seed=7)
        assert first.trace == second.trace
        assert first.answers == second.answers
        assert not math.isnan(first.throttle_rate(0))


class TestContract:
    def test_adaptive_fields(self) -> None:
        """``adaptive`` is off by default; ``initial_concurrent`` starts the live limit under the ceiling."""
        from autogen_capacity import AgentCapacity

        assert AgentCapacity(max_concurrent=8).adaptive is False
        cap = AgentCapacity(max_concurrent=8, adaptive=True, initial_concurrent=3)
        assert LiveLimit(cap.max_concurrent or 1, initial=cap.initial_concurrent).limit == 3

    @pytest.mark.parametrize(
        "fields",
        [
            {"max_concurrent": 8, "initial_concurrent": 3},
            {"adaptive": True, "initial_concurrent": 3},
            {"max_concurrent": 2, "adaptive": True, "initial_concurrent": 3},
        ],
    )
    def test_initial_concurrent_needs_an_adaptive_ceiling(self, fields: dict[str, object]) -> None:
        """A start without ``adaptive``, without a ceiling, or above it is refused."""
        from pydantic import ValidationError

        from autogen_capacity import AgentCapacity

        with pytest.raises(ValidationError, match="initial_concurrent"):
            AgentCapacity.model_validate(fields)
