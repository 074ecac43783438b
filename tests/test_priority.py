"""Priority classes and the wait line: tables for every rule, the aging bound, shedding, and a stateful property
test against a brute-force model."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from autogen_capacity.exceptions import CapacityExhausted, QueueFull
from autogen_capacity.priority import (
    DEFAULT_AGING_S,
    DEFAULT_PRIORITY,
    PRIORITIES,
    LineFull,
    Priority,
    WaitLine,
    effective_rank,
    rank,
)


def _line(*waiters: tuple[str, Priority, float], aging_s: float = 10.0) -> WaitLine[str]:
    line: WaitLine[str] = WaitLine(aging_s=aging_s)
    for item, priority, now in waiters:
        line.push(item, priority, now)
    return line


def _drain(line: WaitLine[str], now: float) -> list[str]:
    served = []
    while (item := line.pop_next(now)) is not None:
        served.append(item)
    return served


class TestClasses:
    def test_names_and_order(self) -> None:
        """The three SRE criticality classes, highest first; "default" is the default."""
        assert PRIORITIES == ("critical", "default", "sheddable")
        assert DEFAULT_PRIORITY == "default"
        assert [rank(p) for p in PRIORITIES] == [2, 1, 0]

    def test_unknown_class(self) -> None:
        """A class that is not one of the three is refused with the valid names."""
        with pytest.raises(ValueError, match="critical, default, sheddable"):
            rank("urgent")  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        ("priority", "waited", "aging_s", "expected"),
        [
            ("sheddable", 0.0, 10.0, 0),
            ("sheddable", 9.9, 10.0, 0),
            ("sheddable", 10.0, 10.0, 1),
            ("sheddable", 19.9, 10.0, 1),
            ("sheddable", 20.0, 10.0, 2),
            ("sheddable", 1e9, 10.0, 2),
            ("default", 9.9, 10.0, 1),
            ("default", 10.0, 10.0, 2),
            ("default", 1e9, 10.0, 2),
            ("critical", 1e9, 10.0, 2),
            ("sheddable", -5.0, 10.0, 0),
            ("sheddable", 1e9, math.inf, 0),
            ("default", 3.0, 1.5, 2),
        ],
    )
    def test_effective_rank(self, priority: Priority, waited: float, aging_s: float, expected: int) -> None:
        """One class up per whole aging_s waited, never above critical; infinite aging_s lifts nothing."""
        assert effective_rank(priority, waited, aging_s) == expected


class TestServiceOrder:
    @pytest.mark.parametrize(
        ("waiters", "now", "served"),
        [
            pytest.param(
                [("a", "default", 0), ("b", "default", 1), ("c", "default", 2)], 3, ["a", "b", "c"], id="fifo"
            ),
            pytest.param(
                [("s", "sheddable", 0), ("d", "default", 1), ("c", "critical", 2)], 3, ["c", "d", "s"], id="classes"
            ),
            pytest.param(
                [("c1", "critical", 0), ("s", "sheddable", 1), ("c2", "critical", 2), ("d", "default", 3)],
                4,
                ["c1", "c2", "d", "s"],
                id="interleaved",
            ),
            pytest.param([("d", "default", 0), ("c", "critical", 5)], 9.9, ["c", "d"], id="not-yet-aged"),
            pytest.param([("d", "default", 0), ("c", "critical", 5)], 10, ["d", "c"], id="aged-and-older"),
            pytest.param([("c", "critical", 0), ("d", "default", 5)], 15, ["c", "d"], id="aged-but-younger"),
            pytest.param([("s", "sheddable", 0), ("d", "default", 1)], 10, ["s", "d"], id="aged-one-class-tie-oldest"),
            pytest.param(
                [("s", "sheddable", 0), ("c", "critical", 1)], 19.9, ["c", "s"], id="sheddable-one-class-short"
            ),
            pytest.param([("s", "sheddable", 0), ("c", "critical", 1)], 20, ["s", "c"], id="sheddable-lifted-twice"),
            pytest.param([("d", "default", 3), ("c", "critical", 3)], 20, ["c", "d"], id="same-age-own-class-first"),
        ],
    )
    def test_table(self, waiters: list[tuple[str, Priority, float]], now: float, served: list[str]) -> None:
        """The oldest waiter of the highest effective class goes first; ties in effective class go to the
        older waiter, then to the higher own class."""
        line = _line(*waiters)

        assert list(line.in_order(now)) == served
        assert _drain(line, now) == served

    def test_empty(self) -> None:
        """An empty line serves nobody."""
        line: WaitLine[str] = WaitLine()

        assert line.pop_next(0) is None
        assert line.peek(0) is None
        assert len(line) == 0
        assert not line

    def test_no_aging(self) -> None:
        """With aging_s=inf, classes are strict: a sheddable waiter waits behind any critical one, forever."""
        line = _line(("s", "sheddable", 0), ("c", "critical", 1e6), aging_s=math.inf)

        assert _drain(line, 1e9) == ["c", "s"]

    def test_iteration_and_position(self) -> None:
        """Iteration is service order as of the latest time the line was told; position counts who goes first."""
        line = _line(("s", "sheddable", 0), ("d", "default", 1), ("c", "critical", 2))

        assert list(line) == ["c", "d", "s"]
        assert [line.position(item, 2) for item in ("c", "d", "s")] == [0, 1, 2]
        assert line.position("s", 20) == 0  # lifted to critical, and the oldest
        assert line.peek(20) == "s"
        assert "d" in line
        assert "x" not in line
        assert line.count("critical") == 1

    def test_default_aging(self) -> None:
        """Without an argument, a waiter is lifted one class per DEFAULT_AGING_S."""
        line = _line(("d", "default", 0), ("c", "critical", 1), aging_s=DEFAULT_AGING_S)

        assert line.peek(DEFAULT_AGING_S - 0.1) == "c"
        assert line.peek(DEFAULT_AGING_S) == "d"

    @pytest.mark.parametrize("aging_s", [0.0, -1.0, math.nan])
    def test_aging_must_be_positive(self, aging_s: float) -> None:
        """aging_s of zero, below zero or NaN is refused."""
        with pytest.raises(ValueError, match="aging_s"):
            WaitLine(aging_s=aging_s)

    def test_duplicate_push(self) -> None:
        """An item waits at most once in a line."""
        line = _line(("a", "default", 0))

        with pytest.raises(ValueError, match="already waits"):
            line.push("a", "critical", 1)
        with pytest.raises(ValueError, match="already waits"):
            line.push_front("a", "critical", 0)

    def test_out_of_order_arrival(self) -> None:
        """A push with an earlier time than the youngest waiter's still takes its place by arrival."""
        line = _line(("a", "default", 0), ("c", "default", 2), ("b", "default", 1))

        assert _drain(line, 3) == ["a", "b", "c"]


class TestAgingBound:
    @pytest.mark.parametrize(("priority", "lifts"), [("sheddable", 2), ("default", 1), ("critical", 0)])
    def test_served_within_the_bound_under_a_steady_critical_stream(self, priority: Priority, lifts: int) -> None:
        """With a critical waiter always queued (one arrives and one is served every second), a lower-class
        waiter is passed over only until lifts * aging_s has passed, then served next: nobody starves."""
        aging_s = 10.0
        line: WaitLine[str] = WaitLine(aging_s=aging_s)
        line.push("c-0", "critical", 0)
        line.push("c-1", "critical", 0)
        line.push("low", priority, 0.5)
        served_at = None
        for t in range(1, 100):
            line.push(f"c+{t}", "critical", t)
            if line.pop_next(t) == "low":
                served_at = t
                break

        assert served_at is not None
        # Two older critical waiters go first whatever happens; newcomers only until the waiter is lifted.
        assert served_at == max(3, math.ceil(0.5 + lifts * aging_s))

    def test_only_older_waiters_go_ahead_once_lifted(self) -> None:
        """Once a sheddable waiter is lifted to critical, the waiters that arrived before it (of any class)
        are the only ones still served ahead of it."""
        line = _line(("d-old", "default", 0), ("c-old", "critical", 1), ("s", "sheddable", 2))
        for t in (3, 4, 5):
            line.push(f"c{t}", "critical", t)

        order = line.in_order(22)  # s waited 20 s: critical; d-old waited 22: critical too, and older

        assert order[:3] == ["d-old", "c-old", "s"]


class TestShedding:
    @pytest.mark.parametrize(
        ("waiters", "newcomer", "shed"),
        [
            pytest.param([("s1", "sheddable", 0), ("s2", "sheddable", 1)], "critical", "s2", id="youngest-sheddable"),
            pytest.param([("s1", "sheddable", 0), ("s2", "sheddable", 1)], "default", "s2", id="default-sheds-too"),
            pytest.param([("s", "sheddable", 0), ("d", "default", 1)], "critical", "s", id="lowest-class-first"),
            pytest.param(
                [("d1", "default", 0), ("d2", "default", 1)], "critical", "d2", id="default-when-no-sheddable"
            ),
            pytest.param([("d1", "default", 0), ("s", "sheddable", 1)], "default", "s", id="only-below-the-newcomer"),
            pytest.param([("s", "sheddable", 0), ("c", "critical", 1)], "critical", "s", id="aged-still-sheddable"),
        ],
    )
    def test_table(self, waiters: list[tuple[str, Priority, float]], newcomer: Priority, shed: str) -> None:
        """At max_queue, the youngest waiter of the lowest class below the newcomer's is dropped (by declared
        class: aging orders service, it does not protect from shedding) and taken out of the line."""
        line = _line(*waiters)

        assert line.shed_for(newcomer, 2, 100) == shed
        assert shed not in line
        assert len(line) == 1

    @pytest.mark.parametrize(
        ("waiters", "newcomer"),
        [
            pytest.param([("c", "critical", 0), ("d", "default", 1)], "sheddable", id="sheddable-newcomer"),
            pytest.param([("s", "sheddable", 0), ("s2", "sheddable", 1)], "sheddable", id="sheddable-among-sheddable"),
            pytest.param([("c", "critical", 0), ("d", "default", 1)], "default", id="nothing-below-default"),
            pytest.param([("c", "critical", 0), ("c2", "critical", 1)], "critical", id="all-critical"),
        ],
    )
    def test_refused(self, waiters: list[tuple[str, Priority, float]], newcomer: Priority) -> None:
        """A newcomer with nobody of a lower class to displace is refused with LineFull; the line is unchanged."""
        line = _line(*waiters)

        with pytest.raises(LineFull) as refused:
            line.shed_for(newcomer, 2, 5)

        assert refused.value.priority == newcomer
        assert refused.value.max_queue == 2
        assert isinstance(refused.value, QueueFull)
        assert isinstance(refused.value, CapacityExhausted)
        assert len(line) == 2

    @pytest.mark.parametrize("max_queue", [None, 3, 10])
    def test_room(self, max_queue: int | None) -> None:
        """Below max_queue (or with none), nothing is shed, even for a sheddable newcomer."""
        line = _line(("s", "sheddable", 0), ("d", "default", 1))

        assert line.shed_for("sheddable", max_queue, 2) is None
        assert len(line) == 2

    def test_zero_max_queue(self) -> None:
        """max_queue=0 admits no waiter at all."""
        line: WaitLine[str] = WaitLine()

        with pytest.raises(LineFull):
            line.shed_for("critical", 0, 0)

    def test_shed_then_push(self) -> None:
        """The caller queues the newcomer after the shed: the line stays at max_queue, sheddable ones go first."""
        line: WaitLine[str] = WaitLine()
        for i in range(3):
            line.push(f"s{i}", "sheddable", i)
        for i in range(3):
            assert line.shed_for("critical", 3, 10 + i) == f"s{2 - i}"
            line.push(f"c{i}", "critical", 10 + i)

        assert len(line) == 3
        assert list(line) == ["c0", "c1", "c2"]
        with pytest.raises(LineFull):
            line.shed_for("critical", 3, 20)


class TestRemoveAndPushFront:
    def test_remove(self) -> None:
        """A removed waiter is never served, and the others keep their order."""
        line = _line(("a", "default", 0), ("b", "default", 1), ("c", "default", 2))

        line.remove("b")

        assert "b" not in line
        assert len(line) == 2
        assert _drain(line, 3) == ["a", "c"]

    def test_remove_missing(self) -> None:
        """remove() of a waiter that is not there raises KeyError; discard() says so instead."""
        line = _line(("a", "default", 0))

        with pytest.raises(KeyError):
            line.remove("x")
        assert line.discard("x") is False
        assert line.discard("a") is True
        assert len(line) == 0

    def test_remove_head_and_tail(self) -> None:
        """Removing the oldest or the youngest of a class leaves the rest served and sheddable as before."""
        line = _line(("s1", "sheddable", 0), ("s2", "sheddable", 1), ("s3", "sheddable", 2))

        line.remove("s1")
        line.remove("s3")

        assert line.peek(3) == "s2"
        assert line.shed_for("critical", 1, 3) == "s2"
        assert len(line) == 0

    def test_push_front_goes_back_to_the_head(self) -> None:
        """A waiter woken as the head of its class that lost the race goes back ahead of its class."""
        line = _line(("a", "default", 0), ("b", "default", 1), ("c", "default", 2))
        woken = line.pop_next(3)
        assert woken == "a"

        line.push_front("a", "default", line_since := 0)

        assert line_since == 0
        assert list(line.in_order(3)) == ["a", "b", "c"]
        assert line.since("a") == 0
        assert line.priority_of("a") == "default"

    def test_push_front_keeps_aging(self) -> None:
        """The aging clock of a waiter put back runs from when it first came, not from when it was put back."""
        line = _line(("d", "default", 0), ("c", "critical", 1))
        assert line.pop_next(2) == "c"
        line.push("c2", "critical", 5)
        assert line.pop_next(6) == "c2"

        line.push("c3", "critical", 8)
        line.push_front("c2", "critical", 5)

        assert line.peek(9) == "c2"
        assert line.in_order(10) == ["d", "c2", "c3"]  # d, queued at 0, is lifted at 10

    def test_push_front_ahead_of_equal_arrivals(self) -> None:
        """Put back with the same arrival time as the head, it goes ahead of it."""
        line = _line(("b", "default", 0))

        line.push_front("a", "default", 0)

        assert _drain(line, 1) == ["a", "b"]

    def test_push_front_with_older_put_back(self) -> None:
        """Two waiters put back in the wrong order are still served by arrival."""
        line = _line(("a", "default", 0), ("b", "default", 1), ("c", "default", 2))
        assert line.pop_next(3) == "a"
        assert line.pop_next(3) == "b"

        line.push_front("b", "default", 1)
        line.push_front("a", "default", 0)

        assert _drain(line, 3) == ["a", "b", "c"]

    def test_many_removals_are_compacted(self) -> None:
        """Waiters that give up in the middle of a stalled line do not pile up inside it."""
        line: WaitLine[int] = WaitLine()
        line.push(-1, "default", 0)
        for i in range(1000):
            line.push(i, "default", 1 + i)
            line.remove(i)

        assert len(line) == 1
        assert len(line._classes[1].entries) < 100
        assert line.pop_next(2000) == -1

    def test_position_in_a_long_line_reads_few_waiters(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Every waiter asks its place at each retry window: with thousands in line, a scan of the whole line
        per ask made a window cost O(n^2) and a 5000-caller line stalled for minutes."""
        line: WaitLine[int] = WaitLine(aging_s=10)
        for i in range(6000):
            line.push(i, PRIORITIES[i % 3], i / 100)
        keys_read = 0
        real = effective_rank

        def counting(priority: Priority, waited_s: float, aging_s: float) -> int:
            nonlocal keys_read
            keys_read += 1
            return real(priority, waited_s, aging_s)

        monkeypatch.setattr("autogen_capacity.priority.effective_rank", counting)

        assert line.position(5999, now=60) == 5999
        assert line.position(0, now=60) == 0
        assert keys_read <= 2 * (1 + 3 * math.ceil(math.log2(2000) + 1))

    def test_repr(self) -> None:
        """The repr counts each class."""
        line = _line(("a", "critical", 0), ("b", "sheddable", 1))

        assert repr(line) == "WaitLine(critical=1, default=0, sheddable=1, aging_s=10.0)"


def _model_key(entry: tuple[int, float, int], aging_s: float, now: float) -> tuple[int, float, int, int]:
    rank_, since, seq = entry
    lifted = effective_rank(PRIORITIES[2 - rank_], now - since, aging_s)
    return (lifted, -since, rank_, -seq)


class WaitLineMachine(RuleBasedStateMachine):
    """WaitLine against a brute-force model: the same set of waiters, never lost or duplicated, and each pop
    is the waiter with the highest effective class, oldest first."""

    AGING_S = 4.0

    def __init__(self) -> None:
        super().__init__()
        self.line: WaitLine[int] = WaitLine(aging_s=self.AGING_S)
        self.model: dict[int, tuple[int, float, int]] = {}
        """item -> (rank, arrival, tie order)"""
        self.popped: dict[int, tuple[int, float]] = {}
        """Served waiters that may be put back: item -> (rank, arrival)."""
        self.now = 0.0
        self.ids = 0
        self.back = 0
        self.front = 0

    def _key(self, item: int) -> tuple[int, float, int, int]:
        return _model_key(self.model[item], self.AGING_S, self.now)

    @rule(priority=st.sampled_from(PRIORITIES), dt=st.sampled_from([0.0, 0.5, 1.0, 3.0]))
    def push(self, priority: Priority, dt: float) -> None:
        self.now += dt
        self.ids += 1
        self.line.push(self.ids, priority, self.now)
        self.model[self.ids] = (rank(priority), self.now, self.back)
        self.back += 1

    @rule(dt=st.sampled_from([0.0, 0.5, 2.0]))
    def pop(self, dt: float) -> None:
        self.now += dt
        expected = max(self.model, key=self._key) if self.model else None
        if expected is not None:
            best = self._key(expected)
            assert all(self._key(i)[:2] <= best[:2] for i in self.model)  # highest effective class, oldest

        served = self.line.pop_next(self.now)

        assert served == expected
        if served is not None:
            rank_, since, _ = self.model.pop(served)
            self.popped[served] = (rank_, since)

    @precondition(lambda self: self.popped)
    @rule(data=st.data())
    def push_front(self, data: st.DataObject) -> None:
        item = data.draw(st.sampled_from(sorted(self.popped)))
        rank_, since = self.popped.pop(item)
        self.front -= 1
        self.line.push_front(item, PRIORITIES[2 - rank_], since)
        self.model[item] = (rank_, since, self.front)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        item = data.draw(st.sampled_from(sorted(self.model)))
        self.line.remove(item)
        del self.model[item]

    @rule(priority=st.sampled_from(PRIORITIES), max_queue=st.integers(0, 6))
    def shed(self, priority: Priority, max_queue: int) -> None:
        if len(self.model) < max_queue:
            assert self.line.shed_for(priority, max_queue, self.now) is None
            return
        lower = [i for i, (r, _, _) in self.model.items() if r < rank(priority)]
        if not lower:
            with pytest.raises(LineFull):
                self.line.shed_for(priority, max_queue, self.now)
            return
        lowest = min(self.model[i][0] for i in lower)
        expected = max((i for i in lower if self.model[i][0] == lowest), key=lambda i: self.model[i][1:])

        assert self.line.shed_for(priority, max_queue, self.now) == expected
        del self.model[expected]

    @invariant()
    def same_waiters(self) -> None:
        assert len(self.line) == len(self.model)
        assert set(self.line.in_order(self.now)) == set(self.model)
        assert all(item in self.line for item in self.model)
        assert sum(self.line.count(p) for p in PRIORITIES) == len(self.model)

    @invariant()
    def service_order(self) -> None:
        assert self.line.in_order(self.now) == sorted(self.model, key=self._key, reverse=True)

    @invariant()
    def positions(self) -> None:
        for item in self.model:
            mine = self._key(item)
            assert self.line.position(item, self.now) == sum(self._key(i) > mine for i in self.model)


WaitLineMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestWaitLineProperties = WaitLineMachine.TestCase
