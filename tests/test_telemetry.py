"""OpenTelemetry metrics and spans, read with the SDK's in-memory reader and exporter (issue 19)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from autogen_agentchat.base import TaskResult
from autogen_agentchat.messages import TextMessage
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from agents import WorkerAgent
from autogen_capacity import AgentCapacity, CapacityAwareGroupChat, InMemoryLedger, Overloaded, acquire, telemetry
from autogen_capacity.admission import Admission, Candidate
from autogen_capacity.testing import FakeLoopClock, no_backoff
from faults import QUICK, RateLimitError, quota_error

TIMEOUT = 30.0
SLOW = {"backoff_initial_ms": 60_000, "backoff_ceiling_ms": 60_000, "backoff_jitter": False}
KEY = "autogen_capacity.key"
AGENT = "gen_ai.agent.name"
TEAM = "autogen_capacity.team"


@dataclass
class Otel:
    reader: InMemoryMetricReader
    spans: InMemorySpanExporter
    tracers: TracerProvider

    def points(self, name: str) -> list[tuple[dict[str, Any], Any]]:
        """Each data point of metric ``name``: its attributes and its point (``.value``, or ``.count``/``.sum``)."""
        data = self.reader.get_metrics_data()
        found = []
        for resource in data.resource_metrics if data is not None else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found += [(dict(p.attributes or {}), p) for p in metric.data.data_points]
        return found

    def values(self, name: str) -> dict[tuple[tuple[str, Any], ...], Any]:
        """Counter or gauge values by their sorted attributes."""
        return {tuple(sorted(a.items())): p.value for a, p in self.points(name)}

    def waits(self) -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans() if s.name == telemetry.WAIT_SPAN]


@pytest.fixture(name="otel")
def _otel() -> Iterator[Otel]:
    """Real SDK providers for this test only, handed to the library (the global ones are left alone)."""
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    spans = InMemorySpanExporter()
    tracers = TracerProvider()
    tracers.add_span_processor(SimpleSpanProcessor(spans))
    telemetry.instrument(meter_provider=meters, tracer_provider=tracers)
    yield Otel(reader, spans, tracers)
    telemetry.uninstrument()
    meters.shutdown()
    tracers.shutdown()


async def until_waiting(ledger: InMemoryLedger, key: str) -> None:
    while (usage := (await ledger.snapshot()).get(key)) is None or not usage.waiting:  # noqa: ASYNC110
        await asyncio.sleep(0)  # yields to the run without moving time; the ledger has no "waiter arrived" signal


def attrs(**items: Any) -> tuple[tuple[str, Any], ...]:
    named = {KEY: items.pop("key"), **items}
    if "agent" in named:
        named[AGENT] = named.pop("agent")
    if "team" in named:
        named[TEAM] = named.pop("team")
    return tuple(sorted(named.items()))


async def saturated_run(ledger: InMemoryLedger, *, name: str = "crew") -> TaskResult:
    """A one-member team whose member is held elsewhere: it waits, then the holder lets go."""
    contract = AgentCapacity(max_concurrent=1, max_caller_retries=1, **SLOW)
    held = await ledger.try_acquire("a", contract)
    assert held is not None
    team = CapacityAwareGroupChat([WorkerAgent("a")], name=name, capacities={"a": contract}, ledger=ledger, max_turns=1)
    run = asyncio.ensure_future(team.run(task="go"))
    await asyncio.wait_for(until_waiting(ledger, "a"), TIMEOUT)
    await held.release()
    return await asyncio.wait_for(run, TIMEOUT)


class TestTeamRun:
    async def test_a_wait_is_a_span_a_histogram_point_and_a_deferral(self, otel: Otel) -> None:
        """A saturated member makes the team wait: the wait histogram, a deferral (slots) and a capacity.wait
        span that says why, how many attempts and that it ended admitted."""
        result = await saturated_run(InMemoryLedger())
        assert [m.source for m in result.messages if isinstance(m, TextMessage)] == ["user", "a"]

        [(labels, point)] = otel.points(telemetry.ADMISSION_WAIT)
        assert labels == {KEY: "a", AGENT: "a", TEAM: "crew"}
        assert point.count == 1
        assert point.sum > 0
        assert otel.values(telemetry.DEFERRALS) == {attrs(key="a", agent="a", team="crew", reason="slots"): 1}

        [span] = otel.waits()
        assert dict(span.attributes or {}) == {
            KEY: "a",
            AGENT: "a",
            TEAM: "crew",
            "autogen_capacity.wait.candidates": ("a",),
            "autogen_capacity.wait.reason": "slots",
            "autogen_capacity.wait.attempts": 1,
            "autogen_capacity.wait.outcome": "admitted",
        }
        assert [e.name for e in span.events] == ["autogen_capacity.backoff"]
        assert span.status.status_code is StatusCode.UNSET

    async def test_an_immediate_admission_is_measured_without_a_span(
        self, otel: Otel, fake_clock: FakeLoopClock
    ) -> None:
        """A member with headroom is admitted at once: a 0 s point on the histogram, no span, no deferral."""
        contract = AgentCapacity(max_concurrent=1)
        team = CapacityAwareGroupChat(
            [WorkerAgent("a")], capacities={"a": contract}, ledger=InMemoryLedger(), max_turns=1
        )
        await team.run(task="go")
        [(_, point)] = otel.points(telemetry.ADMISSION_WAIT)
        assert (point.count, point.sum) == (1, 0)
        assert otel.waits() == []
        assert otel.points(telemetry.DEFERRALS) == []

    async def test_a_deferral_next_to_the_speaker_is_counted(self, otel: Otel) -> None:
        """A member held elsewhere passed over for another one is one deferral, with its reason."""
        ledger, contract = InMemoryLedger(), AgentCapacity(max_concurrent=1)
        held = await ledger.try_acquire("a", contract)
        assert held is not None
        team = CapacityAwareGroupChat(
            [WorkerAgent("a"), WorkerAgent("b")], name="pool", capacities={"a": contract}, ledger=ledger, max_turns=1
        )
        await team.run(task="go")
        await held.release()
        assert otel.values(telemetry.DEFERRALS) == {attrs(key="a", agent="a", team="pool", reason="slots"): 1}
        assert otel.waits() == []

    @pytest.mark.parametrize(
        ("error", "kind"),
        [(RateLimitError(429, headers={"retry-after-ms": "2"}), "throttled"), (quota_error(), "exhausted")],
    )
    async def test_an_overload_is_counted_by_kind(self, otel: Otel, error: Exception, kind: str) -> None:
        """A 429 counts as throttled, a spent quota as exhausted, on the member's key and name."""
        team = CapacityAwareGroupChat(
            [Failing("a", [error]), WorkerAgent("b")],
            capacities={"a": AgentCapacity(max_concurrent=1, **QUICK), "b": AgentCapacity(max_concurrent=1)},
            routing="round_robin",
            ledger=InMemoryLedger(),
            max_turns=1,
        )
        with no_backoff():
            await asyncio.wait_for(team.run(task="go"), TIMEOUT)
        assert otel.values(telemetry.OVERLOADS) == {attrs(key="a", agent="a", kind=kind): 1}

    async def test_an_exhausted_run_is_counted_and_its_wait_span_says_so(self, otel: Otel) -> None:
        """A member held for longer than its contract waits ends the run exhausted: one exhausted run, and a
        wait span with the outcome, an exhaustion event and an error status."""
        ledger, contract = InMemoryLedger(), AgentCapacity(max_concurrent=1, max_caller_retries=1, **QUICK)
        held = await ledger.try_acquire("a", contract)
        assert held is not None
        team = CapacityAwareGroupChat([WorkerAgent("a")], name="crew", capacities={"a": contract}, ledger=ledger)
        result = await asyncio.wait_for(team.run(task="go"), TIMEOUT)
        await held.release()
        assert (result.stop_reason or "").startswith("Capacity exhausted")
        assert otel.values(telemetry.EXHAUSTED_RUNS) == {attrs(key="crew", team="crew"): 1}
        [span] = otel.waits()
        assert span.attributes is not None
        assert span.attributes["autogen_capacity.wait.outcome"] == "exhausted"
        assert span.attributes["autogen_capacity.wait.attempts"] == 1
        assert span.attributes["error.type"] == "CapacityExhausted"
        assert [e.name for e in span.events] == ["autogen_capacity.backoff", "autogen_capacity.exhausted"]
        assert span.status.status_code is StatusCode.ERROR
        assert otel.points(telemetry.ADMISSION_WAIT) == []

    async def test_a_team_refused_its_own_lease_is_an_exhausted_run(self, otel: Otel) -> None:
        """A team whose own key stays saturated ends its run exhausted, counted under its key."""
        ledger, contract = (
            InMemoryLedger(),
            AgentCapacity(key="shared", max_concurrent=1, max_caller_retries=1, **QUICK),
        )
        held = await ledger.try_acquire("shared", contract)
        assert held is not None
        team = CapacityAwareGroupChat([WorkerAgent("a")], name="crew", capacity=contract, ledger=ledger, max_turns=1)
        result = await asyncio.wait_for(team.run(task="go"), TIMEOUT)
        await held.release()
        assert (result.stop_reason or "").startswith("Capacity exhausted")
        assert otel.values(telemetry.EXHAUSTED_RUNS) == {attrs(key="shared", team="crew"): 1}

    async def test_the_wait_span_is_in_the_runs_trace_next_to_autogens_spans(
        self, otel: Otel, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Run inside an app's span, the capacity.wait span and AutoGen's invoke_agent span share its trace."""
        # AutoGen's invoke_agent span always uses the global provider: set it for this test only.
        monkeypatch.setattr(trace, "_TRACER_PROVIDER", otel.tracers)
        with otel.tracers.get_tracer("app").start_as_current_span("request") as request:
            await saturated_run(InMemoryLedger())
        trace_id = request.get_span_context().trace_id
        spans = otel.spans.get_finished_spans()
        [wait] = otel.waits()
        [invoke] = [s for s in spans if s.name == "invoke_agent a"]
        assert wait.context is not None
        assert invoke.context is not None
        assert wait.context.trace_id == invoke.context.trace_id == trace_id
        assert wait.parent is not None
        assert wait.start_time is not None
        assert invoke.start_time is not None
        assert wait.start_time <= invoke.start_time


class Failing(WorkerAgent):
    """Raises the queued errors first, then answers."""

    def __init__(self, name: str, errors: Sequence[Exception]) -> None:
        super().__init__(name)
        self.errors = list(errors)

    async def on_messages(self, messages: Sequence[Any], cancellation_token: Any) -> Any:
        if self.errors:
            raise self.errors.pop(0)
        return await super().on_messages(messages, cancellation_token)


class TestAdmissionOutcomes:
    async def test_a_wait_the_termination_condition_ends_is_stopped(self, otel: Otel) -> None:
        """should_stop ending a wait ends its span with the outcome stopped."""
        ledger, contract = InMemoryLedger(), AgentCapacity(max_concurrent=1, **SLOW)
        held = await ledger.try_acquire("k", contract)
        assert held is not None

        async def stop() -> bool:
            return True

        admitted = await Admission(ledger, should_stop=stop, poll_s=0.001).admit([Candidate("k", "k", contract)])
        assert admitted is None
        [span] = otel.waits()
        assert span.attributes is not None
        assert span.attributes["autogen_capacity.wait.outcome"] == "stopped"
        assert span.status.status_code is StatusCode.UNSET
        await held.release()

    async def test_a_cancelled_wait_ends_its_span(self, otel: Otel) -> None:
        """A caller cancelled while waiting leaves no span open: it ends with the outcome cancelled."""
        ledger, contract = InMemoryLedger(), AgentCapacity(max_concurrent=1, **SLOW)
        held = await ledger.try_acquire("k", contract)
        assert held is not None
        waiter = asyncio.ensure_future(acquire("k", contract, ledger=ledger))
        await asyncio.wait_for(until_waiting(ledger, "k"), TIMEOUT)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        [span] = otel.waits()
        assert span.attributes is not None
        assert span.attributes["autogen_capacity.wait.outcome"] == "cancelled"
        assert span.status.status_code is StatusCode.UNSET
        await held.release()

    async def test_a_bare_acquire_names_no_agent(self, otel: Otel) -> None:
        """acquire() on a key involves no member: its points carry the key only."""
        async with await acquire("k", AgentCapacity(max_concurrent=1), ledger=InMemoryLedger()):
            pass
        [(labels, _)] = otel.points(telemetry.ADMISSION_WAIT)
        assert labels == {KEY: "k"}

    async def test_a_tool_overload_names_the_tool(self, otel: Otel) -> None:
        """An overload recorded for a tool carries its name as the agent's."""
        from autogen_capacity.admission import record_overload
        from autogen_capacity.overload import classify_overload

        overload = classify_overload(Overloaded("busy", retry_after=0.001))
        assert overload is not None
        await record_overload(
            InMemoryLedger(), "k", overload, overloads=1, schedule=AgentCapacity(), exhausted_ttl_s=1, member="tool"
        )
        assert otel.values(telemetry.OVERLOADS) == {attrs(key="k", agent="tool", kind="throttled"): 1}


class TestLedgerGauges:
    async def test_in_flight_and_headroom_per_key(self, otel: Otel) -> None:
        """An observed ledger reports each key's leases in flight and each contract key's headroom."""
        ledger, contract = InMemoryLedger(), AgentCapacity(max_concurrent=2)
        held = await ledger.try_acquire("a", contract)
        assert held is not None
        async with telemetry.observe_ledger(ledger, {"a": contract, "b": contract}) as observer:
            await observer.refresh()
            # The export thread reads what the loop cached; it never calls into the loop.
            in_flight = await asyncio.to_thread(otel.values, telemetry.IN_FLIGHT)
            headroom = otel.values(telemetry.HEADROOM)
        assert in_flight == {attrs(key="a"): 1, attrs(key="b"): 0}
        assert headroom == {attrs(key="a"): (await ledger.status("a", contract)).headroom, attrs(key="b"): 1.0}
        assert headroom[attrs(key="a")] < 1.0
        assert otel.points(telemetry.IN_FLIGHT) == []  # closed: no longer reported
        await held.release()

    async def test_an_adaptive_keys_live_limit_is_a_gauge(self, otel: Otel) -> None:
        """An adaptive key reports its live limit, which drops after a throttled answer."""
        ledger, contract = InMemoryLedger(), AgentCapacity(max_concurrent=4, adaptive=True)
        leases = [await ledger.try_acquire("a", contract) for _ in range(4)]
        await ledger.observe(leases[0], throttled=True)  # type: ignore[arg-type]
        async with telemetry.observe_ledger(ledger, {"a": contract}) as observer:
            await observer.refresh()
            live = await asyncio.to_thread(otel.values, telemetry.LIVE_LIMIT)
        assert live == {attrs(key="a"): 2}
        for lease in leases:
            assert lease is not None
            await lease.release()

    async def test_the_loop_refreshes_what_the_gauges_read(self, otel: Otel) -> None:
        """The observer's task reads the ledger again every interval."""
        ledger, contract = InMemoryLedger(), AgentCapacity(max_concurrent=2)
        async with telemetry.observe_ledger(ledger, interval_s=0.001) as observer:
            held = await ledger.try_acquire("a", contract)
            assert held is not None
            while not observer.in_flight:  # noqa: ASYNC110
                await asyncio.sleep(0.001)
        assert otel.values(telemetry.IN_FLIGHT) == {}
        await held.release()

    async def test_a_failing_ledger_reports_nothing(self, otel: Otel) -> None:
        """When the ledger cannot be read, the gauges report nothing rather than stale values."""
        ledger = Broken()
        observer = telemetry.observe_ledger(ledger, interval_s=60)  # type: ignore[arg-type]
        await observer.refresh()
        assert otel.points(telemetry.IN_FLIGHT) == []
        await observer.aclose()

    async def test_the_interval_must_be_positive(self) -> None:
        with pytest.raises(ValueError, match="interval_s"):
            telemetry.observe_ledger(InMemoryLedger(), interval_s=0)


class Broken:
    async def snapshot(self) -> Mapping[str, Any]:
        raise ConnectionError("down")


class TestWithoutSdk:
    async def test_instruments_are_created_once_and_attributes_reused(self) -> None:
        """With the global (no-op) providers the instruments are built once, and a turn's attributes are
        looked up, not built again."""
        telemetry.uninstrument()
        first = telemetry._get()
        await (await acquire("k", AgentCapacity(), ledger=InMemoryLedger())).release()
        assert telemetry._get() is first
        assert first is not None
        assert first.attrs("t", "k", "a") is first.attrs("t", "k", "a")
        telemetry.uninstrument()

    def test_attribute_cache_stays_bounded(self) -> None:
        """Keys made up on the fly do not grow the attribute cache without bound."""
        telemetry.uninstrument()
        found = telemetry._get()
        assert found is not None
        for i in range(5000):
            found.attrs(None, f"k{i}", None)
        assert sum(len(m) for m in found.attributes[None].values()) <= 4097
        telemetry.uninstrument()
