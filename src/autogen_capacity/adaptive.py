"""Live limits: how much a provider can take *now*, learned from its answers, under the declared ceiling.

A declared ``max_concurrent`` says what a provider is designed for; the provider's answers say what it takes
today. :class:`LiveLimit` keeps one key's live concurrency limit between 1 and the declared ceiling:

* **a throttled answer (429) drops it multiplicatively**, once per burst: answers to requests admitted
  before the drop are the same burst and change nothing;
* **a failed probe retreats one step**: after the limit stepped up to a level that then throttles, it goes
  back to the last level that served a full window, and waits twice as long (up to ``max_probe_patience``
  windows) before it probes that level again, so a converged key sends few 429s;
* **latency well above its baseline drops it by the gradient** (``tolerance * baseline / recent``, never
  below ``min_backoff_ratio``), and latency moderately above it holds growth (Gradient2's signal, without its
  growth term);
* **it climbs back additively**: one step after a *window* (as many successes as the limit) of requests
  admitted at the limit without overload; a key used below its limit never grows (no upward drift).

Pure and deterministic: no I/O, no clock reads, no randomness. Every method takes the time it happened
(``now``, seconds of any monotonic clock: the loop clock in the library) and the caller decides when to
call. See ``docs/adaptive.md`` for the algorithm's derivation and simulations.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["AdaptiveParams", "ChangeReason", "LimitChange", "LiveLimit"]

ChangeReason = Literal["throttled", "probe_failed", "latency", "probe", "ceiling"]
"""Why a live limit changed: a 429 dropped it; a step up was answered with a 429 and retreated; latency rose
above its baseline; a window at the limit without overload stepped it up; the ceiling moved under it."""

_EPS = 1e-9
_SLOW_BASELINE = 10
_ELEVATED = 1.2


@dataclass(frozen=True, slots=True)
class AdaptiveParams:
    """The algorithm's constants. The defaults converge without tuning (see ``docs/adaptive.md``).

    .. versionadded:: 0.2.0
    """

    backoff_ratio: float = 0.7
    """The multiplicative drop on a throttled burst (CUBIC's 0.7; TCP Reno halves, Netflix's AIMD keeps 0.9)."""
    min_backoff_ratio: float = 0.5
    """No single drop goes below this share of the limit, whatever the in-flight hint or the gradient say."""
    latency_tolerance: float = 2.0
    """Recent latency above ``latency_tolerance`` x baseline drops the limit by the gradient."""
    growth_tolerance: float = 1.5
    """Recent latency above ``growth_tolerance`` x baseline holds the limit (no step up)."""
    short_window: int = 10
    """Successes the recent latency averages over (an exponential average)."""
    long_window: int = 100
    """Successes the baseline latency averages over (an exponential average, a plain mean until then)."""
    warmup: int = 10
    """Successes seen before latency may drop or hold the limit."""
    max_probe_patience: int = 16
    """The most windows waited at a level before probing the level above it again after it throttled."""

    def __post_init__(self) -> None:
        if not 0 < self.min_backoff_ratio <= self.backoff_ratio < 1:
            msg = "need 0 < min_backoff_ratio <= backoff_ratio < 1"
            raise ValueError(msg)
        if not 1 <= self.growth_tolerance <= self.latency_tolerance:
            msg = "need 1 <= growth_tolerance <= latency_tolerance"
            raise ValueError(msg)
        if min(self.short_window, self.long_window, self.max_probe_patience) < 1 or self.warmup < 0:
            msg = "windows and patience must be >= 1, warmup >= 0"
            raise ValueError(msg)


DEFAULT_PARAMS = AdaptiveParams()


@dataclass(frozen=True, slots=True)
class LimitChange:
    """One change of a live limit: for events and logs."""

    at: float
    old: int
    new: int
    reason: ChangeReason


@dataclass(slots=True)
class _Latency:
    """A short (recent) and a long (baseline) exponential average of success latencies."""

    short_alpha: float
    long_window: int
    samples: int = 0
    short: float = 0.0
    long: float = 0.0

    def add(self, latency: float, *, loaded: bool) -> None:
        """Add a sample. A sample taken under our own load while the recent average is elevated teaches the
        baseline ten times slower: a latency our load causes must not become the norm at once (upward drift),
        while a slower provider (seen by requests alone on the key) becomes the norm at the usual pace."""
        self.samples += 1
        if self.samples == 1:
            self.short = self.long = latency
            return
        self.short += (latency - self.short) * self.short_alpha
        window = min(self.samples, self.long_window)
        if loaded and latency > self.long and self.short > _ELEVATED * self.long:
            window *= _SLOW_BASELINE
        self.long += (latency - self.long) / window
        if self.long > 2 * self.short:
            # Gradient2: latency is back to normal after a long overload; let the baseline follow faster.
            self.long *= 0.95


@dataclass(slots=True)
class LiveLimit:
    """One key's live concurrency limit: never above ``ceiling``, never below 1.

    Args:
        ceiling: The declared ``max_concurrent``.
        initial: The limit to start from; the ceiling when ``None``.
        params: The algorithm's constants.

    The caller reports every admission and every answer on the key, each with the number of requests in
    flight on the key when that request was admitted (itself included), and, for answers, when it was
    admitted (``Lease.acquired_at``), which tells bursts apart exactly. Without ``admitted_at`` a burst lasts
    until the requests in flight at the drop have answered and one recent latency has passed.

    Examples:
        >>> live = LiveLimit(8)
        >>> live.on_admitted(in_flight=8, now=0.0)
        >>> live.on_throttled(now=0.1, in_flight=8, admitted_at=0.0)
        >>> live.limit
        5

    .. versionadded:: 0.2.0
    """

    ceiling: int
    initial: int | None = None
    params: AdaptiveParams = DEFAULT_PARAMS
    last_change: LimitChange | None = field(default=None, init=False)
    """The most recent change, if any."""
    changed_at: float | None = field(default=None, init=False)
    """When the limit last changed (``None``: never); with ``now`` it tells how long the key has been in its state."""
    throttles: int = field(default=0, init=False)
    """Throttled answers seen, bursts or not."""
    _estimate: float = field(default=0.0, init=False)
    _served: int = field(default=0, init=False)
    """Successes admitted at the current level's limit since it was reached."""
    _trial: int | None = field(default=None, init=False)
    _failed: int | None = field(default=None, init=False)
    _strikes: int = field(default=0, init=False)
    _drop_at: float | None = field(default=None, init=False)
    _pending: int = field(default=0, init=False)
    _in_flight: int = field(default=0, init=False)
    _latency: _Latency = field(init=False)

    def __post_init__(self) -> None:
        if self.ceiling < 1:
            msg = f"ceiling must be >= 1, got {self.ceiling}"
            raise ValueError(msg)
        start = self.ceiling if self.initial is None else self.initial
        if not 1 <= start <= self.ceiling:
            msg = f"initial must be between 1 and the ceiling ({self.ceiling}), got {start}"
            raise ValueError(msg)
        self._estimate = float(start)
        self._latency = _Latency(2 / (self.params.short_window + 1), self.params.long_window)

    @property
    def limit(self) -> int:
        """The live limit: leases a key admits at once now."""
        return max(1, min(self.ceiling, math.floor(self._estimate + _EPS)))

    @property
    def latency(self) -> tuple[float, float] | None:
        """The recent and the baseline latency in seconds, once a success was seen."""
        lat = self._latency
        return (lat.short, lat.long) if lat.samples else None

    def set_ceiling(self, ceiling: int, now: float) -> None:
        """Move the ceiling (a contract changed, a provider announced its limit); the limit follows it down."""
        if ceiling < 1:
            msg = f"ceiling must be >= 1, got {ceiling}"
            raise ValueError(msg)
        old = self.limit
        self.ceiling = ceiling
        if self._estimate > ceiling:
            self._estimate = float(ceiling)
        self._changed(old, now, "ceiling")

    def on_admitted(self, in_flight: int, now: float) -> None:
        """A request was admitted on the key; ``in_flight`` counts it."""
        del now  # part of the protocol: every event says when it happened
        self._in_flight = in_flight

    def on_success(self, latency_s: float, in_flight: int, now: float, *, admitted_at: float | None = None) -> None:
        """A request answered without overload after ``latency_s`` seconds; ``in_flight`` is the number in
        flight when it was admitted (itself included)."""
        self._completed()
        lat = self._latency
        loaded = in_flight >= max(2, self.limit / 2)  # latency can only be our own queue when we fill it
        if latency_s > 0 and math.isfinite(latency_s):
            lat.add(latency_s, loaded=loaded)
        if self._same_burst(now, admitted_at):
            return  # admitted under an older, higher limit: it says nothing about the current one
        p = self.params
        warm = lat.samples >= p.warmup and lat.long > 0
        if warm and loaded and lat.short > p.latency_tolerance * lat.long:
            gradient = max(p.min_backoff_ratio, p.latency_tolerance * lat.long / lat.short)
            self._drop(self._estimate * gradient, now, "latency")
            return
        if in_flight < self.limit or (warm and lat.short > p.growth_tolerance * lat.long):
            return
        self._served += 1
        if self._trial is not None and self._served >= self.limit:
            if self._failed is not None and self._trial >= self._failed:
                self._failed, self._strikes = None, 0  # the level that throttled serves now
            self._trial = None
        if self.limit < self.ceiling and self._served >= self._patience() * self.limit:
            old = self.limit
            self._estimate = float(old + 1)
            self._trial, self._served = old + 1, 0
            self._changed(old, now, "probe")

    def on_throttled(self, now: float, *, in_flight: int | None = None, admitted_at: float | None = None) -> None:
        """A request was answered with a throttle (429, Retry-After); ``in_flight`` is the number in flight
        when it was admitted (itself included), ``admitted_at`` when. Drops the limit once per burst."""
        self._completed()
        self.throttles += 1
        if self._same_burst(now, admitted_at):
            return
        old = self.limit
        if self._trial is not None and old == self._trial and (in_flight is None or in_flight >= old):
            self._strike(old)
            self._drop(float(old - 1), now, "probe_failed")
            return
        target = self._estimate * self.params.backoff_ratio
        if in_flight is not None:
            target = min(target, in_flight - 1)  # it served fewer than were in flight
        self._strike(old)
        self._drop(max(target, self._estimate * self.params.min_backoff_ratio), now, "throttled")

    def _strike(self, level: int) -> None:
        """``level`` throttled: one more strike when it is at or below the last level that did (the provider
        keeps answering no there), else the first."""
        self._strikes = self._strikes + 1 if self._failed is not None and level <= self._failed else 1
        self._failed = level

    def _patience(self) -> int:
        """Windows to wait at the current level before stepping up: one after a lone overload while below the
        level that throttled (fast recovery), else twice as many per strike, up to ``max_probe_patience``."""
        if self._failed is None or (self.limit + 1 < self._failed and self._strikes <= 1):
            return 1
        return min(1 << self._strikes, self.params.max_probe_patience)

    def _drop(self, estimate: float, now: float, reason: ChangeReason) -> None:
        old = self.limit
        self._estimate = max(1.0, min(float(self.ceiling), estimate))
        self._trial, self._served = None, 0
        self._drop_at = now
        self._pending = self._in_flight
        self._changed(old, now, reason)

    def _completed(self) -> None:
        self._in_flight = max(0, self._in_flight - 1)
        self._pending = max(0, self._pending - 1)

    def _same_burst(self, now: float, admitted_at: float | None) -> bool:
        """Whether an answer belongs to the burst that last dropped the limit."""
        if self._drop_at is None:
            return False
        if admitted_at is not None:
            return admitted_at <= self._drop_at
        lat = self._latency
        round_trip = lat.short if lat.samples else 0.0
        return self._pending > 0 or now < self._drop_at + round_trip

    def _changed(self, old: int, now: float, reason: ChangeReason) -> None:
        new = self.limit
        if new != old:
            self.last_change = LimitChange(now, old, new, reason)
            self.changed_at = now

    def to_state(self) -> dict[str, Any]:
        """Everything the limit has learned, as JSON-ready data (:class:`~autogen_capacity.RedisLedger` keeps
        it in Redis, so every process sharing a key continues one learning); :meth:`from_state` reads it back."""
        lat, last = self._latency, self.last_change
        return {
            "ceiling": self.ceiling,
            "estimate": self._estimate,
            "served": self._served,
            "trial": self._trial,
            "failed": self._failed,
            "strikes": self._strikes,
            "drop_at": self._drop_at,
            "pending": self._pending,
            "in_flight": self._in_flight,
            "throttles": self.throttles,
            "changed_at": self.changed_at,
            "last_change": None if last is None else [last.at, last.old, last.new, last.reason],
            "latency": [lat.samples, lat.short, lat.long],
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], params: AdaptiveParams = DEFAULT_PARAMS) -> LiveLimit:
        """The limit :meth:`to_state` described.

        Raises:
            ValueError: ``state`` is not what :meth:`to_state` writes.
        """
        try:
            live = cls(int(state["ceiling"]), params=params)
            live._estimate = float(state["estimate"])
            live._served, live._strikes = int(state["served"]), int(state["strikes"])
            live._trial, live._failed, live._drop_at = state["trial"], state["failed"], state["drop_at"]
            live._pending, live._in_flight = int(state["pending"]), int(state["in_flight"])
            live.throttles, live.changed_at = int(state["throttles"]), state["changed_at"]
            last = state["last_change"]
            live.last_change = (
                None if last is None else LimitChange(float(last[0]), int(last[1]), int(last[2]), last[3])
            )
            live._latency.samples, live._latency.short, live._latency.long = state["latency"]
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            msg = f"not a live limit's state: {exc!r}"
            raise ValueError(msg) from exc
        return live
