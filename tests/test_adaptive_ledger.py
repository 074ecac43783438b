"""Adaptive contracts on the in-memory ledger (issue 17): the declared max_concurrent is a ceiling, the live
limit drops on a throttled answer (once per burst) and climbs back while the key serves at its limit."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from autogen_agentchat.agents import BaseChatAgent
from autogen_agentchat.base import Response
from autogen_agentchat.messages import BaseChatMessage, TextMessage
from autogen_core import CancellationToken

from autogen_capacity import AgentCapacity, CapacityAwareGroupChat, CapacityLedger, InMemoryLedger, Lease
from autogen_capacity.headers import cooldown_observer, parse_rate_limit_headers
from autogen_capacity.testing import FakeLoopClock
from faults import RateLimitError

ADAPTIVE = AgentCapacity(max_concurrent=4, adaptive=True, max_caller_retries=50)


async def take(ledger: CapacityLedger, n: int, capacity: AgentCapacity = ADAPTIVE) -> list[Lease]:
    """``n`` leases on key ``k`` (each must be admitted)."""
    leases = []
    for _ in range(n):
        lease = await ledger.try_acquire("k", capacity)
        assert lease is not None
        leases.append(lease)
    return leases


async def answer(ledger: CapacityLedger, key: str, *, throttled: bool, capacity: AgentCapacity = ADAPTIVE) -> None:
    """One call on ``key``: leased, answered (a 429 when ``throttled``), released."""
    lease = await ledger.try_acquire(key, capacity)
    assert lease is not None
    await ledger.observe(lease, throttled=throttled)
    await lease.release()


async def test_a_throttled_answer_lowers_the_live_limit_once_per_burst(
    ledger: InMemoryLedger, fake_clock: FakeLoopClock
) -> None:
    """Four in flight, two answer 429: the limit drops once (to 2), and only two are admitted afterwards."""
    leases = await take(ledger, 4)
    for lease in leases[:2]:
        await ledger.observe(lease, throttled=True)
    for lease in leases:
        await lease.release()

    assert (await ledger.snapshot())["k"].live_limit == 2
    await take(ledger, 2)
    assert await ledger.try_acquire("k", ADAPTIVE) is None


async def test_the_live_limit_climbs_back_while_serving_at_it(
    ledger: InMemoryLedger, fake_clock: FakeLoopClock
) -> None:
    """After a drop, a key that keeps serving at its live limit without a 429 grows back to the ceiling."""
    first = await take(ledger, 4)
    await ledger.observe(first[0], throttled=True)
    for lease in first:
        await lease.release()
    for _ in range(200):
        fake_clock.advance(1)
        batch = await take(ledger, (await ledger.snapshot())["k"].live_limit or 1)
        for lease in batch:
            await ledger.observe(lease, throttled=False)
            await lease.release()

    assert (await ledger.snapshot())["k"].live_limit == 4


async def test_a_plain_contract_has_no_live_limit(ledger: InMemoryLedger) -> None:
    """Without ``adaptive=True`` a 429 changes no limit (only the cooldown the caller records)."""
    lease = await ledger.try_acquire("k", AgentCapacity(max_concurrent=4))
    assert lease is not None
    await ledger.observe(lease, throttled=True)
    await lease.release()
    assert (await ledger.snapshot())["k"].live_limit is None


class Backend:
    """A provider that serves two calls at once and answers 429 past that."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.now = 0
        self.calls = 0
        self.throttled = 0


class Member(BaseChatAgent):
    def __init__(self, name: str, backend: Backend) -> None:
        super().__init__(name, description="a member on a shared backend")
        self.backend = backend
        self.capacity = AgentCapacity(
            max_concurrent=4,
            adaptive=True,
            key="backend",
            max_caller_retries=50,
            backoff_initial_ms=50,
            backoff_ceiling_ms=200,
        )

    @property
    def produced_message_types(self) -> Sequence[type[BaseChatMessage]]:
        return (TextMessage,)

    async def on_messages(self, messages: Sequence[BaseChatMessage], cancellation_token: CancellationToken) -> Response:
        backend = self.backend
        backend.calls += 1
        if backend.now >= backend.limit:
            backend.throttled += 1
            raise RateLimitError(429, headers={"retry-after-ms": "5"})
        backend.now += 1
        try:
            await asyncio.sleep(0.01)
        finally:
            backend.now -= 1
        return Response(chat_message=TextMessage(content="ok", source=self.name))

    async def on_reset(self, cancellation_token: CancellationToken) -> None:
        pass


async def test_teams_learn_a_backends_true_limit() -> None:
    """Eight teams on a backend that serves 2 at once, declared 4: every run completes and the 429s stay a burst
    (at most a quarter of the calls; with the same contract static, about half the calls are 429s). Where the
    live limit ends depends on how many calls overlap at the backend, which a slow machine changes."""
    ledger = InMemoryLedger()
    backend = Backend(limit=2)
    teams = [
        CapacityAwareGroupChat([Member(f"m{i}", backend)], name=f"t{i}", ledger=ledger, max_turns=6) for i in range(8)
    ]
    results = await asyncio.wait_for(asyncio.gather(*(t.run(task="go") for t in teams)), 30)

    assert all(r.stop_reason == "Maximum number of turns 6 reached." for r in results), [r.stop_reason for r in results]
    assert (await ledger.snapshot())["backend"].live_limit is not None
    assert backend.throttled <= backend.calls // 4
    await ledger.aclose()


async def test_a_spent_window_on_a_success_cools_the_key(ledger: InMemoryLedger, fake_clock: FakeLoopClock) -> None:
    """Headers of a successful answer that say the requests window is spent take the key out until its reset."""
    observe = cooldown_observer(ledger, "k")
    limits = parse_rate_limit_headers(
        {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1.5s"}, status=200
    )
    assert limits is not None

    await observe(limits)

    status = await ledger.status("k", ADAPTIVE)
    assert status.blocked_by == "cooldown"
    assert status.ready_in == 1.5


async def test_a_window_with_room_leaves_the_key_alone(ledger: InMemoryLedger, fake_clock: FakeLoopClock) -> None:
    """Remaining requests in the window: no cooldown."""
    limits = parse_rate_limit_headers(
        {"x-ratelimit-remaining-requests": "7", "x-ratelimit-reset-requests": "1.5s"}, status=200
    )
    assert limits is not None
    await cooldown_observer(ledger, "k")(limits)
    assert (await ledger.status("k", ADAPTIVE)).blocked_by is None


async def test_waiters_are_served_after_the_live_limit_drops_under_the_leases_held(
    ledger: InMemoryLedger, fake_clock: FakeLoopClock
) -> None:
    """Four leases held, four callers waiting, then a 429 drops the live limit to 2: the releases hand over only
    the slots the key has. Before, each of the four releases reserved a slot for a waiter, four reservations
    under a limit of two left every waiter refused (each saw the others' reservations), and they all waited out
    their contract: a run on the simulated provider of benchmarks/adaptive.py hung for hours of simulated time."""
    from autogen_capacity import acquire
    from autogen_capacity.testing import settle

    leases = await take(ledger, 4)
    waiters = [asyncio.ensure_future(acquire("k", ADAPTIVE, ledger=ledger)) for _ in range(4)]
    await settle(*waiters)
    await ledger.observe(leases[0], throttled=True)
    for lease in leases:
        await lease.release()
    await settle(*waiters)

    assert (await ledger.snapshot())["k"].live_limit == 2
    served = [w for w in waiters if w.done()]
    assert len(served) == 2  # at once, with no time passing
    for w in served:
        await w.result().release()
    await settle(*waiters)
    assert all(w.done() for w in waiters)
    for w in waiters:
        if not w.result().released:
            await w.result().release()


async def test_a_moved_live_limit_is_an_event_in_the_run_stream() -> None:
    """A team whose member's answer drops its adaptive key's live limit says so in run_stream: a
    LiveLimitChangedEvent with the member, the key, the old and new limits, the ceiling and why."""
    from autogen_capacity import LiveLimitChangedEvent

    class ThrottledOnce(Member):
        async def on_messages(
            self, messages: Sequence[BaseChatMessage], cancellation_token: CancellationToken
        ) -> Response:
            try:
                return await super().on_messages(messages, cancellation_token)
            finally:
                self.backend.limit = 1  # one 429, then the backend serves the retry

    ledger = InMemoryLedger()
    backend = Backend(limit=0)
    team = CapacityAwareGroupChat([ThrottledOnce("m", backend)], ledger=ledger, max_turns=1, emit_team_events=True)
    events: list[LiveLimitChangedEvent] = []

    async def run() -> None:
        async for item in team.run_stream(task="go"):
            if isinstance(item, LiveLimitChangedEvent):
                events.append(item)

    await asyncio.wait_for(run(), 30)

    assert len(events) == 1
    event = events[0]
    assert (event.member, event.key, event.old, event.ceiling, event.content) == ("m", "backend", 4, 4, "throttled")
    assert 1 <= event.new < 4
    assert event.new == (await ledger.snapshot())["backend"].live_limit
    await ledger.aclose()


async def test_the_trajectory_shows_in_snapshots_and_routing_prefers_the_healthy(
    ledger: InMemoryLedger, fake_clock: FakeLoopClock
) -> None:
    """A key that was just throttled shows it (live limit under its ceiling, a recent overload rate, how long
    the limit has held), and its headroom is discounted by that rate, so headroom routing prefers a key with the
    same room that has been healthy."""
    from autogen_capacity.ledger._learning import OVERLOAD_RATE_ALPHA
    from autogen_capacity.routing import rank_by_headroom

    await answer(ledger, "healthy", throttled=False)
    await answer(ledger, "throttled", throttled=True)
    fake_clock.advance(5)

    usage = await ledger.snapshot()
    assert (usage["healthy"].live_limit, usage["healthy"].ceiling, usage["healthy"].overload_rate) == (4, 4, 0.0)
    assert usage["healthy"].limit_steady_for == 5
    assert usage["throttled"].live_limit is not None
    assert usage["throttled"].live_limit < 4
    assert (usage["throttled"].ceiling, usage["throttled"].overload_rate) == (4, OVERLOAD_RATE_ALPHA)
    assert usage["throttled"].limit_steady_for == 5

    statuses = await ledger.statuses({"healthy": ADAPTIVE, "throttled": ADAPTIVE})
    assert statuses["throttled"].headroom == pytest.approx(1.0 - OVERLOAD_RATE_ALPHA)
    assert statuses["healthy"].headroom == 1.0
    headroom = {key: status.headroom for key, status in statuses.items()}
    assert rank_by_headroom(["throttled", "healthy"], headroom)[0] == "healthy"
