"""The reliability invariants on RedisLedger, with Redis restarted (empty) while teams run.

* every run ends within a bound: a result, or an error naming the unreachable ledger (LedgerUnavailable, raised
  directly or as AutoGen's RuntimeError), or a member's ordinary error;
* no key is over-admitted, measured by a probe inside the members, apart from Redis;
* no lease outlives its ttl: once the runs ended, within ``lease_ttl_s`` + a margin, Redis shows nothing in
  flight, as seen by a fresh ledger that holds nothing itself.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from autogen_agentchat.base import TaskResult
from autogen_core import CancellationToken

from agents import ConcurrencyProbe
from autogen_capacity import CapacityAwareGroupChat, LedgerUnavailable
from autogen_capacity.ledger.redis import RedisLedger
from faults import BOOM, FaultyMember, contract
from redis_server import RedisServer, redis_server_fixture  # noqa: F401  (registers the fixture)

pytest.importorskip("redis", reason="redis-py is not installed (pip install autogen-capacity[redis])")
pytestmark = pytest.mark.redis

TTL_S = 1.0
RUN_BOUND_S = 30.0
LIMITS = {"a": 1, "b": 2}


@pytest.fixture(name="namespace")
def _namespace() -> str:
    return f"rel-{uuid.uuid4().hex[:8]}"


@pytest.fixture(name="ledgers")
async def _ledgers(redis_server: RedisServer, namespace: str) -> AsyncIterator[list[RedisLedger]]:
    """Three ledgers (three 'processes') on one namespace, closed after the test."""
    made = [RedisLedger(redis_server.url, namespace=namespace, lease_ttl_s=TTL_S) for _ in range(3)]
    yield made
    for ledger in made:
        await ledger.aclose()


def _team(
    index: int, ledger: RedisLedger, probe: ConcurrencyProbe, rng: random.Random
) -> tuple[CapacityAwareGroupChat, list[FaultyMember]]:
    members = [
        FaultyMember(name, probe=probe, delay=rng.uniform(0.005, 0.02), rng=random.Random(rng.random()), fault_rate=0.1)
        for name in ("a", "b", "c")
    ]
    team = CapacityAwareGroupChat(
        members,
        name=f"redis{index}",
        capacities={name: contract(n, retries=20) for name, n in LIMITS.items()},
        ledger=ledger,
        exhausted_ttl_s=0.05,
        max_turns=6,
    )
    return team, members


def _classify(task: asyncio.Task[TaskResult]) -> str:
    error = task.exception()
    if error is None:
        assert task.result().stop_reason
        return "result"
    if isinstance(error, LedgerUnavailable):
        return "ledger unavailable"
    assert isinstance(error, RuntimeError), f"unexpected {type(error).__name__}: {error}"
    text = str(error)
    assert "LedgerUnavailable" not in text, f"the ledger's error reached the caller untyped: {text[:500]}"
    assert BOOM in text, f"a RuntimeError that is neither the ledger's nor a member's: {text[:500]}"
    return "member error"


async def _in_flight(ledger: RedisLedger) -> dict[str, int]:
    return {key: usage.in_flight for key, usage in (await ledger.snapshot()).items() if usage.in_flight}


async def test_redis_restarted_mid_run(
    redis_server: RedisServer, ledgers: list[RedisLedger], namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Twelve runs on three ledgers; Redis restarts empty while they run. Every run ends, cleanly; the
    members' own probe never sees more than max_concurrent; leases are back to zero within the ttl."""
    rng = random.Random(3)
    probe = ConcurrencyProbe()
    teams = [_team(i, ledgers[i % len(ledgers)], probe, rng) for i in range(12)]
    runs = [asyncio.ensure_future(team.run(task="go", cancellation_token=CancellationToken())) for team, _ in teams]
    await asyncio.wait_for(probe.entered.wait(), RUN_BOUND_S)
    await asyncio.sleep(0.05)
    await asyncio.to_thread(redis_server.stop)
    await asyncio.sleep(0.2)
    await asyncio.to_thread(redis_server.start)
    _, pending = await asyncio.wait(runs, timeout=RUN_BOUND_S)
    assert not pending, f"{len(pending)} runs did not end within {RUN_BOUND_S} s"
    outcomes = Counter(_classify(task) for task in runs)
    assert {k: p for k, p in probe.peak.items() if k in LIMITS and p > LIMITS[k]} == {}
    assert {k: n for k, n in probe.now.items() if n} == {}

    # Runs after the restart work again, on the same ledgers.
    again = [asyncio.ensure_future(_team(99, ledger, probe, rng)[0].run(task="again")) for ledger in ledgers]
    await asyncio.wait(again, timeout=RUN_BOUND_S)
    assert all(task.done() for task in again)
    outcomes.update(_classify(task) for task in again)
    assert outcomes["result"] >= 1

    observer = RedisLedger(redis_server.url, namespace=namespace, lease_ttl_s=TTL_S)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TTL_S + 2.0
        while (left := await _in_flight(observer)) and loop.time() < deadline:  # noqa: ASYNC110  (polls Redis)
            await asyncio.sleep(0.05)
        assert left == {}, f"leases outlived their ttl: {left}"
    finally:
        await observer.aclose()
    assert {k: p for k, p in probe.peak.items() if k in LIMITS and p > LIMITS[k]} == {}
    with capsys.disabled():
        print(f"\nredis restart: outcomes {dict(outcomes)}; peaks {probe.peak}")  # noqa: T201


async def test_abandoned_lease_expires_within_ttl(
    redis_server: RedisServer, ledgers: list[RedisLedger], namespace: str
) -> None:
    """A worker that dies holding a lease (its renewal stops, nothing releases it) blocks the key for at most
    ``lease_ttl_s``: then another team is admitted, and nothing is left in flight."""
    crashed = RedisLedger(redis_server.url, namespace=namespace, lease_ttl_s=TTL_S)
    lease = await crashed.try_acquire("a", contract(1))
    assert lease is not None
    assert crashed._heartbeat is not None
    crashed._heartbeat.cancel()  # the process died: no renewal, no release
    await asyncio.gather(crashed._heartbeat, return_exceptions=True)
    crashed._held.clear()
    await crashed.aclose()

    loop = asyncio.get_running_loop()
    died = loop.time()
    assert await _in_flight(ledgers[0]) == {"a": 1}
    assert await ledgers[0].try_acquire("a", contract(1)) is None
    while await _in_flight(ledgers[0]):
        assert loop.time() - died < TTL_S + 1.0, "an abandoned lease outlived its ttl"
        await asyncio.sleep(0.05)
    probe = ConcurrencyProbe()
    team, _ = _team(0, ledgers[0], probe, random.Random(5))
    result = await asyncio.wait_for(team.run(task="go"), RUN_BOUND_S)
    assert result.stop_reason
    assert probe.turns.get("a", 0) >= 1, "the key whose holder died was not routed to again"
    assert probe.peak.get("a", 0) <= 1
    assert await _in_flight(ledgers[0]) == {}
