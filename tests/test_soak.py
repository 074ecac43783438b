"""Soak: many team runs at once on one InMemoryLedger, members failing at random (ordinary errors, 429s,
``Overloaded``, spent quotas, slow turns), some runs cancelled. Every run must end (a result, a clean stop or
a RuntimeError carrying a member's error), no key may be over-admitted (a probe inside the members, apart
from the ledger), nothing may be left in flight (leaks == 0), and no reply a member returned may be missing
from its run's TaskResult. Timings are printed, never asserted.

The normal suite runs a reduced size; ``tox -e soak`` (``pytest -m soak``) runs the large one.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from autogen_core import CancellationToken

from agents import ConcurrencyProbe
from autogen_capacity import AgentCapacity, CapacityAwareGroupChat, InMemoryLedger
from faults import QUICK, FaultyMember, RunRecord, contract, percentile

RUN_BOUND_S = 60.0
LIMITS = {"a": 2, "b": 3, "d": 1, "inner": 2}


@dataclass
class SoakReport:
    runs: int
    ended: int
    outcomes: Counter[str]
    faults: Counter[str]
    leaks: int
    over_admitted: dict[str, int]
    p50_s: float
    p99_s: float
    wall_s: float

    def __str__(self) -> str:
        return (
            f"soak: {self.ended}/{self.runs} runs ended in {self.wall_s:.1f}s; outcomes {dict(self.outcomes)}; "
            f"faults injected {sum(self.faults.values())} {dict(self.faults)}; leaks {self.leaks}; "
            f"over-admitted {self.over_admitted or 'none'}; run time p50 {self.p50_s * 1000:.0f} ms, "
            f"p99 {self.p99_s * 1000:.0f} ms"
        )


def _team(
    index: int, ledger: InMemoryLedger, probe: ConcurrencyProbe, rng: random.Random, rate: float
) -> tuple[CapacityAwareGroupChat, list[FaultyMember]]:
    def member(name: str, *, also: tuple[str, ...] = ()) -> FaultyMember:
        return FaultyMember(
            name,
            probe=probe,
            delay=rng.choice((0.0, 0.0005, 0.002)),
            rng=random.Random(rng.random()),
            fault_rate=rate,
            also=also,
        )

    members = [member("a"), member("b"), member("c")]
    participants: list[object] = list(members)
    if index % 3 == 0:  # every third team has a capacity-aware team inside it
        inner_members = [member("d", also=("inner",)), member("e", also=("inner",))]
        members += inner_members
        participants.append(
            CapacityAwareGroupChat(
                inner_members,
                name="inner",
                capacity=AgentCapacity(max_concurrent=LIMITS["inner"], max_caller_retries=10, **QUICK),
                capacities={"d": contract(LIMITS["d"], retries=10)},
                ledger=ledger,
                exhausted_ttl_s=0.02,
                max_turns=2,
            )
        )
    team = CapacityAwareGroupChat(
        participants,  # type: ignore[arg-type]
        name=f"soak{index}",
        capacities={"a": contract(LIMITS["a"], retries=10), "b": contract(LIMITS["b"], retries=10)},
        routing="round_robin" if index % 4 == 1 else "headroom",
        ledger=ledger,
        exhausted_ttl_s=0.02,
        max_turns=4,
    )
    return team, members


async def soak(runs: int, *, concurrency: int, fault_rate: float, cancel_rate: float, seed: int) -> SoakReport:
    """Run ``runs`` team runs, ``concurrency`` at a time, and report."""
    rng = random.Random(seed)
    ledger, probe = InMemoryLedger(), ConcurrencyProbe()
    loop = asyncio.get_running_loop()
    slots = asyncio.Semaphore(concurrency)
    outcomes: Counter[str] = Counter()
    durations: list[float] = []
    all_members: list[FaultyMember] = []
    started = time.perf_counter()

    async def one(index: int) -> None:
        async with slots:
            team, members = _team(index, ledger, probe, rng, fault_rate)
            all_members.extend(members)
            token = CancellationToken()
            task = asyncio.ensure_future(team.run(task=f"job {index}", cancellation_token=token))
            record = RunRecord.start(task, token, members, loop.time())
            if rng.random() < cancel_rate:
                loop.call_later(rng.uniform(0, 0.01), token.cancel)
            done, _ = await asyncio.wait({task}, timeout=RUN_BOUND_S)
            assert done, f"run {index} did not end within {RUN_BOUND_S} s"
            durations.append(loop.time() - record.started_at)
            outcomes[record.outcome()] += 1

    try:
        await asyncio.gather(*(one(i) for i in range(runs)))
        snapshot = await ledger.snapshot()
    finally:
        await ledger.aclose()
    faults = Counter(f for m in all_members for f in m.injected)
    return SoakReport(
        runs=runs,
        ended=sum(outcomes.values()),
        outcomes=outcomes,
        faults=faults,
        leaks=sum(u.in_flight for u in snapshot.values()) + sum(probe.now.values()),
        over_admitted={k: p for k, p in probe.peak.items() if k in LIMITS and p > LIMITS[k]},
        p50_s=percentile(durations, 0.5),
        p99_s=percentile(durations, 0.99),
        wall_s=time.perf_counter() - started,
    )


def _check(report: SoakReport, capsys: pytest.CaptureFixture[str], record: Callable[[str, object], None]) -> None:
    with capsys.disabled():
        sys.stdout.write(f"\n{report}\n")
    record("soak", str(report))
    assert report.ended == report.runs
    assert report.leaks == 0
    assert report.over_admitted == {}
    assert sum(report.faults.values()) > 0, "the soak injected no faults"
    assert report.outcomes["result"] > 0


async def test_soak_small(capsys: pytest.CaptureFixture[str], record_property: Callable[[str, object], None]) -> None:
    """200 runs, 40 at a time, a fault on about one turn in six, one run in ten cancelled."""
    _check(await soak(200, concurrency=40, fault_rate=0.15, cancel_rate=0.1, seed=1), capsys, record_property)


@pytest.mark.soak
async def test_soak_large(capsys: pytest.CaptureFixture[str], record_property: Callable[[str, object], None]) -> None:
    """3000 runs, 200 at a time, with the same fault mix."""
    _check(await soak(3000, concurrency=200, fault_rate=0.15, cancel_rate=0.1, seed=2), capsys, record_property)
