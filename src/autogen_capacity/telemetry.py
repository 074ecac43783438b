"""OpenTelemetry metrics and spans for admissions, deferrals, overloads and exhausted runs.

The library records through the OpenTelemetry *API* only (``pip install autogen-capacity[otel]``; AutoGen
already depends on it); the app brings the SDK and its exporters. With no SDK configured, every instrument is
the API's no-op proxy, created once on first use, and a hook costs a few dictionary lookups and a no-op call.

Metrics (``autogen_capacity.key`` on every point; ``gen_ai.agent.name`` where a member is involved,
``autogen_capacity.team`` when the caller is a team):

* ``autogen_capacity.admission.wait`` (histogram, s): from asking for a turn to its lease, immediate
  admissions included (0 s);
* ``autogen_capacity.deferrals`` (counter, ``reason``): a candidate passed over (``slots``, ``rate``, ``tpm``,
  ``cooldown``, ``exhausted``);
* ``autogen_capacity.overloads`` (counter, ``kind`` = ``throttled`` / ``exhausted``): an overload answer;
* ``autogen_capacity.exhausted_runs`` (counter): a team run that ended ``Capacity exhausted``;
* ``autogen_capacity.in_flight`` and ``autogen_capacity.headroom`` (observable gauges): per key of a ledger
  registered with :func:`observe_ledger`.

Spans: an admission that has to wait is a ``capacity.wait`` span (never one for an immediate admission) in
the current trace, next to AutoGen's ``invoke_agent`` spans, with its candidates, reason, attempts and outcome;
each backoff window, cooldown and the exhaustion is a span event.

The gauges' observations are kept by ``_telemetry_gauges``.
"""

from __future__ import annotations

import asyncio
import operator
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ._telemetry_gauges import KEY, LedgerObserver, observe_headroom, observe_in_flight, observe_live_limit
from .contracts import AgentCapacity
from .exceptions import CapacityExhausted
from .ledger.base import CapacityLedger, KeyStatus

if TYPE_CHECKING:
    from opentelemetry.metrics import Counter, Histogram, MeterProvider
    from opentelemetry.trace import Span, Tracer, TracerProvider

    from ._engine import Candidate

try:
    from opentelemetry import metrics as _metrics
    from opentelemetry import trace as _trace
except ImportError:  # pragma: no cover - autogen-core depends on opentelemetry-api
    _metrics = _trace = None  # type: ignore[assignment]

__all__ = [
    "ADMISSION_WAIT",
    "DEFERRALS",
    "EXHAUSTED_RUNS",
    "HEADROOM",
    "IN_FLIGHT",
    "LIVE_LIMIT",
    "OVERLOADS",
    "WAIT_SPAN",
    "LedgerObserver",
    "instrument",
    "observe_ledger",
    "uninstrument",
]

SCOPE = "autogen_capacity"
ADMISSION_WAIT = "autogen_capacity.admission.wait"
DEFERRALS = "autogen_capacity.deferrals"
OVERLOADS = "autogen_capacity.overloads"
EXHAUSTED_RUNS = "autogen_capacity.exhausted_runs"
IN_FLIGHT = "autogen_capacity.in_flight"
HEADROOM = "autogen_capacity.headroom"
LIVE_LIMIT = "autogen_capacity.live_limit"
WAIT_SPAN = "capacity.wait"

TEAM = "autogen_capacity.team"
AGENT_NAME = "gen_ai.agent.name"  # the GenAI semantic conventions' name, as AutoGen's invoke_agent spans set it
_WAIT_BUCKETS = (0.0, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_CACHE_LIMIT = 4096


class _Instruments:
    """The instruments of one (meter provider, tracer provider) pair, created once."""

    __slots__ = ("attributes", "deferrals", "exhausted_runs", "overloads", "tracer", "wait")

    def __init__(self, meter_provider: MeterProvider | None, tracer_provider: TracerProvider | None) -> None:
        from . import __version__

        meter = _metrics.get_meter(SCOPE, __version__, meter_provider)
        self.tracer: Tracer = _trace.get_tracer(SCOPE, __version__, tracer_provider)
        self.wait: Histogram = meter.create_histogram(
            ADMISSION_WAIT,
            unit="s",
            description="Time from asking for a turn to its lease.",
            explicit_bucket_boundaries_advisory=_WAIT_BUCKETS,
        )
        self.deferrals: Counter = meter.create_counter(
            DEFERRALS, unit="{deferral}", description="Candidates passed over for lack of headroom."
        )
        self.overloads: Counter = meter.create_counter(
            OVERLOADS, unit="{overload}", description="Overload answers (429, Retry-After, spent quota)."
        )
        self.exhausted_runs: Counter = meter.create_counter(
            EXHAUSTED_RUNS, unit="{run}", description="Team runs that ended 'Capacity exhausted'."
        )
        meter.create_observable_gauge(
            IN_FLIGHT, [observe_in_flight], unit="{lease}", description="Leases held now, per ledger key."
        )
        meter.create_observable_gauge(
            HEADROOM, [observe_headroom], unit="1", description="How much more a key can take, 0 to 1."
        )
        meter.create_observable_gauge(
            LIVE_LIMIT, [observe_live_limit], unit="{lease}", description="An adaptive key's live concurrency limit."
        )
        self.attributes: dict[str | None, dict[str, dict[str, Mapping[str, str]]]] = {}
        """Attribute mappings by team, key and member: built once, not on every turn."""

    def attrs(self, team: str | None, key: str, member: str | None) -> Mapping[str, str]:
        by_key = self.attributes.get(team)
        if by_key is None:
            by_key = self.attributes[team] = {}
        by_member = by_key.get(key)
        if by_member is None:
            by_member = by_key[key] = {}
        name = member or ""
        found = by_member.get(name)
        if found is None:
            if sum(len(m) for m in by_key.values()) > _CACHE_LIMIT:  # dynamic keys: keep memory bounded
                by_key.clear()
                by_member = by_key[key] = {}
            found = by_member[name] = _attributes(team, key, member)
        return found


def _attributes(team: str | None, key: str, member: str | None) -> dict[str, str]:
    attributes = {KEY: key}
    if member is not None:
        attributes[AGENT_NAME] = member
    if team is not None:
        attributes[TEAM] = team
    return attributes


_instruments: _Instruments | None = None


def instrument(*, meter_provider: MeterProvider | None = None, tracer_provider: TracerProvider | None = None) -> None:
    """Record through these providers from now on (``None``: the global ones, as set by the app's SDK).

    Not needed with global providers: the library records through them by default. Tests and apps with
    several providers pass theirs here; :func:`uninstrument` goes back to the global ones.

    .. versionadded:: 0.2.0
    """
    global _instruments
    if _metrics is None:  # pragma: no cover - autogen-core depends on opentelemetry-api
        return
    _instruments = _Instruments(meter_provider, tracer_provider)


def uninstrument() -> None:
    """Go back to the global providers (instruments are created again on next use).

    .. versionadded:: 0.2.0
    """
    global _instruments
    _instruments = None


def _get() -> _Instruments | None:
    global _instruments
    if _instruments is None and _metrics is not None:
        _instruments = _Instruments(None, None)
    return _instruments


def _member(candidate: Candidate, team: str | None) -> str | None:
    """A member is involved when a team admits, or the candidate is named apart from its key (a tool)."""
    return candidate.name if team is not None or candidate.name != candidate.key else None


# ----------------------------------------------------------------- admission hooks (called by the engine)


_BLOCKED_BY = operator.attrgetter("blocked_by")
"""A status's reason, truthy when it is blocked."""


def admitted(
    candidate: Candidate,
    statuses: Mapping[str, KeyStatus],
    candidates: Sequence[Candidate],
    started: float,
    team: str | None,
    wait: WaitSpan | None,
) -> None:
    """An admission that asked at ``started`` (loop time) leased ``candidate``: the wait histogram, the
    candidates deferred next to it, and the end of its wait span."""
    found = _get()
    if found is None:  # pragma: no cover - no opentelemetry-api
        return
    waited = asyncio.get_running_loop().time() - started
    found.wait.record(waited, found.attrs(team, candidate.key, _member(candidate, team)))
    if wait is not None or any(map(_BLOCKED_BY, statuses.values())):  # in C: one status per candidate
        _deferred(found, statuses, candidates, candidate.name, team)
    if wait is not None:
        wait.end("admitted", candidate, team)


def waiting(
    wait: WaitSpan | None,
    statuses: Mapping[str, KeyStatus],
    candidates: Sequence[Candidate],
    window: str,
    retry: int,
    delay: float,
    team: str | None,
) -> WaitSpan | None:
    """Nobody was admitted: count the deferrals and start (or go on with) the admission's wait span."""
    found = _get()
    if found is None:  # pragma: no cover - no opentelemetry-api
        return None
    _deferred(found, statuses, candidates, None, team)
    if wait is None:
        wait = WaitSpan(found.tracer, statuses, candidates, team)
    wait.window(window, retry, delay, statuses, candidates)
    return wait


def stopped(wait: WaitSpan | None) -> None:
    """The termination condition fired while the admission waited."""
    if wait is not None:
        wait.end("stopped", None, None)


def failed(wait: WaitSpan | None, error: BaseException) -> None:
    """The admission ended with ``error``: ``exhausted`` (:class:`CapacityExhausted`, ``QueueFull``
    included), ``cancelled``, or ``error`` (the ledger failed)."""
    if wait is not None:
        if isinstance(error, CapacityExhausted):
            outcome = "exhausted"
        elif isinstance(error, asyncio.CancelledError):
            outcome = "cancelled"
        else:
            outcome = "error"
        wait.end(outcome, None, None, error)


def overloaded(key: str, kind: str, member: str | None = None) -> None:
    """An overload answer on ``key`` (``throttled`` or ``exhausted``)."""
    found = _get()
    if found is not None:
        attributes = {**found.attrs(None, key, member), "kind": kind}
        found.overloads.add(1, attributes)


def run_exhausted(team: str, key: str) -> None:
    """A team run ended ``Capacity exhausted`` (``key``: the team's own key)."""
    found = _get()
    if found is not None:
        found.exhausted_runs.add(1, found.attrs(team, key, None))


def _deferred(
    found: _Instruments,
    statuses: Mapping[str, KeyStatus],
    candidates: Sequence[Candidate],
    admitted: str | None,
    team: str | None,
) -> None:
    for candidate in candidates:
        reason = statuses[candidate.name].blocked_by if candidate.name in statuses else None
        if reason is not None and candidate.name != admitted:
            attributes = {**found.attrs(team, candidate.key, _member(candidate, team)), "reason": reason}
            found.deferrals.add(1, attributes)


class WaitSpan:
    """The ``capacity.wait`` span of one admission that waits: started at its first wait, ended once."""

    __slots__ = ("_attempts", "_ended", "_span")

    def __init__(
        self, tracer: Tracer, statuses: Mapping[str, KeyStatus], candidates: Sequence[Candidate], team: str | None
    ) -> None:
        preferred = next((c for c in candidates if statuses[c.name].blocked_by != "exhausted"), candidates[0])
        attributes: dict[str, Any] = {
            KEY: preferred.key,
            "autogen_capacity.wait.candidates": [c.name for c in candidates],
            "autogen_capacity.wait.reason": statuses[preferred.name].blocked_by or "lost the race",
        }
        if team is not None:
            attributes[TEAM] = team
        self._span: Span = tracer.start_span(WAIT_SPAN, attributes=attributes)
        self._attempts = 0
        self._ended = False

    def window(
        self,
        window: str,
        retry: int,
        delay: float,
        statuses: Mapping[str, KeyStatus],
        candidates: Sequence[Candidate],
    ) -> None:
        if window == "cooldown":
            cooling = [c.key for c in candidates if statuses[c.name].blocked_by == "cooldown"]
            self._span.add_event(
                "autogen_capacity.cooldown", {"autogen_capacity.keys": cooling, "autogen_capacity.delay_s": delay}
            )
        else:
            self._attempts = retry
            self._span.add_event(
                "autogen_capacity.backoff", {"autogen_capacity.attempt": retry, "autogen_capacity.delay_s": delay}
            )

    def end(
        self,
        outcome: str,
        candidate: Candidate | None,
        team: str | None,
        error: BaseException | None = None,
    ) -> None:
        if self._ended:
            return
        self._ended = True
        span = self._span
        span.set_attribute("autogen_capacity.wait.attempts", self._attempts)
        span.set_attribute("autogen_capacity.wait.outcome", outcome)
        if candidate is not None:
            span.set_attribute(KEY, candidate.key)
            member = _member(candidate, team)
            if member is not None:
                span.set_attribute(AGENT_NAME, member)
        if outcome == "exhausted":
            span.add_event("autogen_capacity.exhausted", {"autogen_capacity.reason": str(error)})
        if error is not None and outcome != "cancelled":
            span.set_attribute("error.type", type(error).__name__)
            span.set_status(_trace.StatusCode.ERROR, str(error))
        span.end()


def observe_ledger(
    ledger: CapacityLedger,
    contracts: Mapping[str, AgentCapacity] | None = None,
    *,
    interval_s: float = 1.0,
) -> LedgerObserver:
    """Report ``ledger``'s keys on the ``in_flight`` gauge, and the headroom of each key in ``contracts``
    (keyed by ledger key) on the ``headroom`` gauge, refreshed on the running loop every ``interval_s``.

    Call it with the loop running; stop with ``await observer.aclose()`` (or ``async with``).

    Raises:
        RuntimeError: no event loop is running.

    .. versionadded:: 0.2.0
    """
    if interval_s <= 0:
        raise ValueError(f"interval_s must be > 0, got {interval_s}")
    _get()  # the gauges exist once something is observed
    observer = LedgerObserver(ledger, contracts, interval_s)
    observer._start()
    return observer
