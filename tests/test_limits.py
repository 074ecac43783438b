"""The limit arithmetic both ledgers share (``ledger/_limits.py``), by table, and RedisLedger's Lua against it:
the same operations give the same status on both ledgers."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from autogen_capacity import AgentCapacity, InMemoryLedger, KeyStatus, RedisLedger
from autogen_capacity.ledger._limits import IDLE, RATE_SLACK, key_status, leaked, tokens_ready_in
from redis_server import RedisServer, redis_server_fixture  # noqa: F401  (registers the fixture)


class TestLeaked:
    @pytest.mark.parametrize(
        ("level", "at", "now", "rpm", "expected"),
        [
            (3.0, 0.0, 0.0, 60, 3.0),  # no time passed
            (3.0, 0.0, 1.0, 60, 2.0),  # one request a second
            (3.0, 0.0, 10.0, 60, 0.0),  # never below empty
            (1.0, 0.0, 30.0, 1, 0.5),  # half a minute at one a minute
            (0.0, 5.0, 4.0, 60, 0.0),  # a clock behind the last change leaks nothing
        ],
    )
    def test_leaks_rpm_per_minute(self, level: float, at: float, now: float, rpm: float, expected: float) -> None:
        """The bucket leaks ``rpm / 60`` a second from its last change."""
        assert leaked(level, at, now, rpm) == pytest.approx(expected)

    def test_float_rounding_at_the_boundary_admits(self) -> None:
        """A level a hair above one request short of full counts as one short (a frozen clock must not wait)."""
        assert leaked(4.0 + RATE_SLACK / 2, 0.0, 0.0, 5) == 4.0


def test_tokens_ready_in() -> None:
    """The window frees up when enough of its oldest entries have left it."""
    entries = [(0.0, 50), (10.0, 30), (20.0, 40)]
    assert tokens_ready_in(entries, 120, 100, 25.0) == pytest.approx(35.0)  # after the first entry leaves
    assert tokens_ready_in(entries, 120, 60, 25.0) == pytest.approx(45.0)  # after the second


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        ({"exhausted_until": 5.0, "cooldown_until": 9.0, "free_slots": 0}, KeyStatus(0.0, "exhausted", 5.0)),
        ({"cooldown_until": 3.0, "free_slots": 0}, KeyStatus(0.0, "cooldown", 3.0)),
        ({"free_slots": 0, "rate_level": 5.0, "rpm": 5}, KeyStatus(0.0, "slots")),
        ({"free_slots": 1, "rate_level": 4.5, "rpm": 5}, KeyStatus(0.0, "rate", 6.0)),
        (
            {"free_slots": 1, "tokens_used": 100, "tpm": 100, "token_entries": [(-30.0, 100)]},
            KeyStatus(0.0, "tpm", 30.0),
        ),
        ({"free_slots": 3, "rate_level": 1.0, "rpm": 2, "tokens_used": 10, "tpm": 100}, KeyStatus(0.5)),
        ({"free_slots": 1}, KeyStatus(0.25)),
    ],
    ids=["exhausted first", "cooldown next", "slots before rate", "rate", "tpm", "smallest share", "slots"],
)
def test_key_status(limits: dict[str, object], expected: KeyStatus) -> None:
    """Exhausted, cooldown, slots, rate, tpm, in that order; headroom is the smallest share left."""
    arguments: dict[str, object] = {
        "now": 0.0,
        "exhausted_until": 0.0,
        "cooldown_until": 0.0,
        "free_slots": None,
        "max_concurrent": 4,
        "rate_level": 0.0,
        "rpm": None,
        "tokens_used": 0,
        "tpm": None,
        **limits,
    }
    status = key_status(**arguments)  # type: ignore[arg-type]
    assert (status.blocked_by, status.headroom) == (expected.blocked_by, pytest.approx(expected.headroom))
    assert status.ready_in == (pytest.approx(expected.ready_in) if expected.ready_in is not None else None)


async def test_a_key_with_room_for_anything_shares_one_status() -> None:
    """Statuses are read per member a turn: an idle or unbounded key answers the one shared IDLE status, not a
    new object (a frozen dataclass costs more to build than the rest of the read); any other is its own."""
    ledger = InMemoryLedger()
    idle, unbounded, busy = AgentCapacity(max_concurrent=4), AgentCapacity(), AgentCapacity(max_concurrent=2)
    assert await ledger.try_acquire("busy", busy) is not None
    found = await ledger.statuses({"idle": idle, "unbounded": unbounded, "busy": busy})
    assert found["idle"] is IDLE
    assert found["unbounded"] is IDLE
    assert found["busy"] == KeyStatus(0.5)
    assert KeyStatus(1.0) == IDLE


Setup = Callable[[InMemoryLedger | RedisLedger, str], Awaitable[None]]


async def _take(ledger: InMemoryLedger | RedisLedger, key: str, capacity: AgentCapacity, n: int) -> None:
    for _ in range(n):
        assert await ledger.try_acquire(key, capacity) is not None


CASES: dict[str, tuple[AgentCapacity, Setup]] = {
    "idle": (
        AgentCapacity(max_concurrent=4, rpm=60, tpm=1000),
        lambda ledger, key: _take(ledger, key, AgentCapacity(), 0),
    ),
    "slots": (
        AgentCapacity(max_concurrent=3),
        lambda ledger, key: _take(ledger, key, AgentCapacity(max_concurrent=3), 2),
    ),
    "slots full": (
        AgentCapacity(max_concurrent=2),
        lambda ledger, key: _take(ledger, key, AgentCapacity(max_concurrent=2), 2),
    ),
    "rate": (AgentCapacity(rpm=6), lambda ledger, key: _take(ledger, key, AgentCapacity(rpm=6), 6)),
    "rate half": (AgentCapacity(rpm=600), lambda ledger, key: _take(ledger, key, AgentCapacity(rpm=600), 300)),
    "tpm": (AgentCapacity(tpm=100), lambda ledger, key: ledger.record_tokens(key, 100)),
    "tpm part": (AgentCapacity(tpm=100), lambda ledger, key: ledger.record_tokens(key, 40)),
    "cooldown": (AgentCapacity(max_concurrent=1), lambda ledger, key: ledger.cooldown(key, 30)),
    "exhausted": (AgentCapacity(max_concurrent=1), lambda ledger, key: ledger.mark_exhausted(key, 300)),
}


@pytest.fixture(name="redis_ledger")
async def _redis_ledger(redis_server: RedisServer) -> AsyncIterator[RedisLedger]:
    ledger = RedisLedger(redis_server.url, namespace=f"limits-{uuid.uuid4().hex[:8]}")
    yield ledger
    await ledger.aclose()


@pytest.mark.redis
@pytest.mark.parametrize("case", list(CASES))
async def test_the_lua_agrees_with_the_shared_arithmetic(case: str, redis_ledger: RedisLedger) -> None:
    """The same operations give the same status (reason, headroom, ready_in) on RedisLedger and InMemoryLedger."""
    capacity, setup = CASES[case]
    memory = InMemoryLedger()
    await setup(memory, "k")
    await setup(redis_ledger, "k")

    expected = await memory.status("k", capacity)
    found = await redis_ledger.status("k", capacity)

    assert found.blocked_by == expected.blocked_by
    assert found.headroom == pytest.approx(expected.headroom, abs=0.01)  # Redis' clock moved on a little
    if expected.ready_in is None:
        assert found.ready_in is None
    else:
        assert found.ready_in == pytest.approx(expected.ready_in, abs=0.5)
    await memory.aclose()
