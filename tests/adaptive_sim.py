"""A deterministic discrete-event simulation of callers, a :class:`LiveLimit` key and a provider with a true
concurrency limit, for ``tests/test_adaptive.py`` (and benchmarks). No real time: a heap of events on a
simulated clock, randomness from one seeded :class:`random.Random`.

The model follows the library's engine: a request is admitted while fewer than the live limit are in flight
and the key is not cooling down; waiting callers are admitted oldest first when a slot frees or a cooldown
ends; a throttled answer cools the key down for ``retry_after`` seconds (Retry-After), is recorded before its
slot is released, and the turn is sent again. The provider answers a request that arrives while ``true_limit``
requests are in its hands with a fast 429; otherwise it serves it after a log-normal latency, slowed by
processor sharing above ``soft_limit`` when one is set.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from autogen_capacity.adaptive import LiveLimit


@dataclass
class Outcome:
    turns: int = 0
    calls: int = 0
    throttled: int = 0
    trace: list[tuple[float, int]] = field(default_factory=list)
    """(time, live limit) after every event that changed it."""
    answers: list[tuple[float, bool]] = field(default_factory=list)
    """(time, throttled) per answer."""
    latencies: list[tuple[float, float]] = field(default_factory=list)

    def throttle_rate(self, start: float, end: float = math.inf) -> float:
        window = [t for at, t in self.answers if start <= at < end]
        return sum(window) / len(window) if window else 0.0

    def throttles_between(self, start: float, end: float = math.inf) -> int:
        return sum(t for at, t in self.answers if start <= at < end)

    def limit_at(self, when: float) -> int:
        value = self.trace[0][1]
        for at, limit in self.trace:
            if at > when:
                break
            value = limit
        return value

    def time_share(self, low: int, high: int, start: float, end: float) -> float:
        """Share of ``[start, end)`` the live limit spent within ``[low, high]``."""
        inside = 0.0
        points = [(t, v) for t, v in self.trace if t < end]
        for i, (at, value) in enumerate(points):
            nxt = points[i + 1][0] if i + 1 < len(points) else end
            lo, hi = max(at, start), min(nxt, end)
            if hi > lo and low <= value <= high:
                inside += hi - lo
        return inside / (end - start)

    def limits_between(self, start: float, end: float) -> set[int]:
        return {self.limit_at(start)} | {v for t, v in self.trace if start <= t < end}


@dataclass
class Simulation:
    live: LiveLimit
    true_limit: Callable[[float], int]
    clients: int
    seed: int = 0
    latency_s: float = 1.0
    sigma: float = 0.3
    reject_s: float = 0.05
    retry_after: float = 1.0
    soft_limit: Callable[[float], float] | None = None
    slowdown: Callable[[float], float] | None = None
    """A factor on every latency at a time, whatever the load (a provider slower for everyone)."""
    pass_admitted_at: bool = True
    pass_in_flight: bool = True

    def run(self, until: float) -> Outcome:
        rng = random.Random(self.seed)
        live = self.live
        out = Outcome(trace=[(0.0, live.limit)])
        seq = itertools.count()
        events: list[tuple[float, int, str, tuple[float, int]]] = []
        waiting: deque[int] = deque(range(self.clients))
        in_flight = 0  # on the key (the ledger's count)
        at_provider = 0
        cooldown_until = 0.0
        timer_at: float | None = None

        def note(now: float) -> None:
            if live.limit != out.trace[-1][1]:
                out.trace.append((now, live.limit))

        def admit(now: float) -> None:
            nonlocal in_flight, at_provider, timer_at
            if now < cooldown_until:
                if timer_at != cooldown_until:
                    timer_at = cooldown_until
                    heapq.heappush(events, (cooldown_until, next(seq), "wake", (0.0, 0)))
                return
            while waiting and in_flight < live.limit:
                waiting.popleft()
                in_flight += 1
                live.on_admitted(in_flight, now)
                out.calls += 1
                if at_provider >= self.true_limit(now):
                    heapq.heappush(events, (now + self.reject_s, next(seq), "throttled", (now, in_flight)))
                    continue
                at_provider += 1
                slow = 1.0
                if self.soft_limit is not None:
                    slow = max(1.0, at_provider / self.soft_limit(now))
                if self.slowdown is not None:
                    slow *= self.slowdown(now)
                latency = self.latency_s * slow * rng.lognormvariate(-(self.sigma**2) / 2, self.sigma)
                heapq.heappush(events, (now + latency, next(seq), "served", (now, in_flight)))

        admit(0.0)
        while events:
            now, _, kind, (admitted_at, admitted_in_flight) = heapq.heappop(events)
            if now >= until:
                break
            hint_at = admitted_at if self.pass_admitted_at else None
            hint_n = admitted_in_flight if self.pass_in_flight else None
            if kind == "served":
                at_provider -= 1
                live.on_success(now - admitted_at, admitted_in_flight, now, admitted_at=hint_at)
                out.turns += 1
                out.answers.append((now, False))
                out.latencies.append((now, now - admitted_at))
                in_flight -= 1
                waiting.append(-1)  # the caller's next turn
            elif kind == "throttled":
                live.on_throttled(now, in_flight=hint_n, admitted_at=hint_at)
                out.throttled += 1
                out.answers.append((now, True))
                cooldown_until = max(cooldown_until, now + self.retry_after)  # record before release
                in_flight -= 1
                waiting.appendleft(-1)  # the same turn, sent again first
            elif kind == "wake":
                timer_at = None
            note(now)
            admit(now)
        return out
