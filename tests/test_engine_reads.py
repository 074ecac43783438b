"""What the admission engine reads while it waits: a wait that nothing woke trusts the statuses it read, and a
wake-up on a key is answered by leasing that key straight away."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from autogen_capacity import AgentCapacity, InMemoryLedger, Lease
from autogen_capacity._engine import Admission, Candidate, WaitReport
from autogen_capacity._engine_rules import ROUTED_AROUND, STATUS_REUSE_S, unchanged_without_wakeup
from autogen_capacity.ledger import KeyStatus
from autogen_capacity.testing import FakeLoopClock, settle
from orders import by_headroom

WINDOW_S = 0.1
CAP = AgentCapacity(
    max_concurrent=1,
    backoff_strategy="constant",
    backoff_initial_ms=int(WINDOW_S * 1000),
    backoff_ceiling_ms=int(WINDOW_S * 1000),
    backoff_jitter=False,
    max_caller_retries=100,
)


class CountingLedger(InMemoryLedger):
    """Counts the reads and acquisitions the engine asks for."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    async def statuses(self, keys: object) -> dict[str, KeyStatus]:  # type: ignore[override]
        self.calls["statuses"] += 1
        return await super().statuses(keys)  # type: ignore[arg-type]

    async def acquire_or_status(
        self, key: str, capacity: AgentCapacity, *, idle_only: bool = False
    ) -> Lease | KeyStatus:
        self.calls["acquire_or_status"] += 1
        return await super().acquire_or_status(key, capacity, idle_only=idle_only)

    async def status(self, key: str, capacity: AgentCapacity) -> KeyStatus:
        self.calls["status"] += 1
        return await super().status(key, capacity)


class RivalLedger(CountingLedger):
    """A ledger shared with another process: its callers take the keys in ``taken_after_read`` right after this
    caller's status read, and the next lease of a key in ``taken_on_wakeup``, before this caller gets there."""

    def __init__(self) -> None:
        super().__init__()
        self.taken_after_read: set[str] = set()
        self.taken_on_wakeup: set[str] = set()
        self.rivals: list[Lease] = []

    async def statuses(self, keys: object) -> dict[str, KeyStatus]:  # type: ignore[override]
        found = await super().statuses(keys)
        for key in self.taken_after_read:
            rival = await InMemoryLedger.acquire_or_status(self, key, CAP)
            assert isinstance(rival, Lease)
            self.rivals.append(rival)
        self.taken_after_read.clear()
        return found

    async def acquire_or_status(
        self, key: str, capacity: AgentCapacity, *, idle_only: bool = False
    ) -> Lease | KeyStatus:
        if key in self.taken_on_wakeup:
            self.taken_on_wakeup.discard(key)
            self.calls["acquire_or_status"] += 1
            return KeyStatus(0.0, "slots")
        return await super().acquire_or_status(key, capacity, idle_only=idle_only)


class Reports:
    def __init__(self) -> None:
        self.waits: list[WaitReport] = []

    async def deferred(self, statuses: object, admitted: str | None) -> None:
        return None

    async def waiting(self, report: WaitReport) -> None:
        self.waits.append(report)


class DeferredReports(Reports):
    def __init__(self) -> None:
        super().__init__()
        self.deferred_calls: list[tuple[dict[str, KeyStatus], str | None]] = []

    async def deferred(self, statuses: object, admitted: str | None) -> None:
        assert isinstance(statuses, dict)
        self.deferred_calls.append((dict(statuses), admitted))


async def _hold(ledger: CountingLedger, *keys: str) -> list[Lease]:
    """A lease on each of ``keys`` (another caller's), then the ledger's counts cleared."""
    held = [await ledger.try_acquire(key, CAP) for key in keys]
    assert all(lease is not None for lease in held)
    ledger.calls.clear()
    return [lease for lease in held if lease is not None]


async def _windows(clock: FakeLoopClock, task: asyncio.Task[object], n: int) -> None:
    for _ in range(n):
        clock.advance(WINDOW_S)
        await settle(task)


async def test_window_ends_without_a_wakeup_reuse_the_read(fake_clock: FakeLoopClock) -> None:
    """Every window's end is a pass (a retry spent, a wait reported), but while no release woke the caller and
    every key waited for a release, the statuses read first still hold: no second read (and the first choice was
    tried once, before the read)."""
    ledger, reports = CountingLedger(), Reports()
    holder = await ledger.try_acquire("k", CAP)
    assert holder is not None
    ledger.calls.clear()
    admitting = asyncio.create_task(Admission(ledger, observer=reports).admit([Candidate("a", "k", CAP)]))
    await settle(admitting)
    await _windows(fake_clock, admitting, 5)

    assert [r.retry for r in reports.waits] == [1, 2, 3, 4, 5, 6]
    assert ledger.calls == {"acquire_or_status": 1, "statuses": 1}
    admitting.cancel()
    await asyncio.gather(admitting, return_exceptions=True)


async def test_a_read_older_than_the_reuse_bound_is_read_again(fake_clock: FakeLoopClock) -> None:
    """A slot can also come back without a wake-up (a RedisLedger lease whose holder died expires): the read
    is trusted for STATUS_REUSE_S at most."""
    ledger = CountingLedger()
    holder = await ledger.try_acquire("k", CAP)
    assert holder is not None
    admitting = asyncio.create_task(Admission(ledger).admit([Candidate("a", "k", CAP)]))
    await settle(admitting)
    await _windows(fake_clock, admitting, int(STATUS_REUSE_S / WINDOW_S) + 1)

    assert ledger.calls["statuses"] == 2
    admitting.cancel()
    await asyncio.gather(admitting, return_exceptions=True)


async def test_a_release_is_leased_straight_away(fake_clock: FakeLoopClock) -> None:
    """The release wakes the caller on its key, and the caller leases that key without reading first."""
    ledger = CountingLedger()
    holder, other = await _hold(ledger, "k", "other")
    admitting = asyncio.create_task(Admission(ledger).admit([Candidate("a", "other", CAP), Candidate("b", "k", CAP)]))
    await settle(admitting)
    await holder.release()
    admitted = await asyncio.wait_for(admitting, 5)

    assert admitted is not None
    assert admitted.candidate.name == "b"
    assert ledger.calls == {"statuses": 1, "acquire_or_status": 2}  # the first choice, refused; then b, woken
    assert admitted.lease is not None
    await admitted.lease.release()
    await other.release()


async def test_a_cooldowns_end_is_leased_straight_away(fake_clock: FakeLoopClock) -> None:
    """A cooldown is waited out as one window, and its end (the key's timer) wakes the caller on that key."""
    ledger = CountingLedger()
    await ledger.cooldown("k", 10 * WINDOW_S)
    admitting = asyncio.create_task(Admission(ledger).admit([Candidate("a", "k", CAP)]))
    await settle(admitting)
    await _windows(fake_clock, admitting, 10)
    admitted = await asyncio.wait_for(admitting, 5)

    assert admitted is not None
    assert ledger.calls == {"statuses": 1, "acquire_or_status": 2}  # refused before the read, leased when woken
    assert admitted.lease is not None
    await admitted.lease.release()


async def test_the_first_choice_is_leased_before_anything_is_read() -> None:
    """Candidates in preference order (no order to apply): one that admits costs one ledger call, however many
    candidates there are, and nobody is reported deferred."""
    ledger, reports = CountingLedger(), DeferredReports()
    candidates = [Candidate(f"m{i}", f"k{i}", CAP) for i in range(64)]
    admitted = await Admission(ledger, observer=reports).admit(candidates)

    assert admitted is not None
    assert admitted.candidate.name == "m0"
    assert ledger.calls == {"acquire_or_status": 1}
    assert reports.deferred_calls == [({}, "m0")]
    assert admitted.lease is not None
    await admitted.lease.release()


async def test_a_refused_first_choice_reads_every_status_and_reports_it() -> None:
    """The first choice refused: every status is read, the next candidate leased, the first reported deferred."""
    ledger, reports = CountingLedger(), DeferredReports()
    holder = await ledger.try_acquire("k0", CAP)
    ledger.calls.clear()
    candidates = [Candidate(f"m{i}", f"k{i}", CAP) for i in range(3)]
    admitted = await Admission(ledger, observer=reports).admit(candidates)

    assert admitted is not None
    assert admitted.candidate.name == "m1"
    assert ledger.calls == {"acquire_or_status": 2, "statuses": 1}
    [(statuses, speaker)] = reports.deferred_calls
    assert speaker == "m1"
    assert statuses["m0"].blocked_by == "slots"
    assert admitted.lease is not None
    await admitted.lease.release()
    assert holder is not None
    await holder.release()


async def test_with_an_order_the_statuses_are_read_first() -> None:
    """An order that ranks by status (headroom routing, a model's pick) needs the statuses before any lease."""
    ledger = CountingLedger()

    async def keep(open_: list[Candidate], statuses: object) -> list[Candidate]:
        return open_

    admitted = await Admission(ledger).admit([Candidate("a", "k", CAP), Candidate("b", "j", CAP)], order=keep)

    assert admitted is not None
    assert ledger.calls == {"statuses": 1, "acquire_or_status": 1}
    assert admitted.lease is not None
    await admitted.lease.release()


@pytest.mark.parametrize(
    ("statuses", "age", "trusted"),
    [
        ({"a": KeyStatus(0.0, "slots")}, 0.5, True),
        ({"a": KeyStatus(0.0, "slots"), "b": ROUTED_AROUND}, 0.5, True),
        ({"a": KeyStatus(0.0, "slots")}, STATUS_REUSE_S, False),  # too old: a lease may have expired
        ({"a": KeyStatus(0.0, "slots"), "b": KeyStatus(0.0, "cooldown", 2.0)}, 0.5, False),  # ends by itself
        ({"a": KeyStatus(0.0, "rpm", 0.2)}, 0.5, False),
        ({"a": KeyStatus(0.0, "exhausted", 30.0)}, 0.5, False),
        ({"a": KeyStatus(1.0)}, 0.5, False),  # had headroom: read again
        ({}, 0.5, False),  # never read
    ],
)
def test_which_reads_a_pass_without_a_wakeup_trusts(statuses: dict[str, KeyStatus], age: float, trusted: bool) -> None:
    candidates = [Candidate(name, name, CAP) for name in statuses]
    assert unchanged_without_wakeup(candidates, statuses, age) is trusted


def test_a_nested_teams_probe_is_never_trusted() -> None:
    async def probe() -> KeyStatus:
        return KeyStatus(0.0, "slots")

    statuses = {"a": KeyStatus(0.0, "slots")}
    assert not unchanged_without_wakeup([Candidate("a", "a", CAP, probe=probe)], statuses, 0.0)


async def test_a_lost_race_reports_the_status_that_refused_it_without_reading_again() -> None:
    """The statuses said "a" had room, another process took it before the lease: the refusal's own status is
    what is reported (one ledger call, no second read), and the next candidate is leased."""
    ledger, reports = RivalLedger(), DeferredReports()
    ledger.taken_after_read.add("k")

    async def keep(open_: list[Candidate], statuses: object) -> list[Candidate]:
        return open_

    candidates = [Candidate("a", "k", CAP), Candidate("b", "j", CAP)]
    admitted = await Admission(ledger, observer=reports).admit(candidates, order=keep)

    assert admitted is not None
    assert admitted.candidate.name == "b"
    assert ledger.calls == {"statuses": 1, "acquire_or_status": 2}
    [(statuses, speaker)] = reports.deferred_calls
    assert speaker == "b"
    assert statuses["a"] == KeyStatus(0.0, "slots")
    assert admitted.lease is not None
    await admitted.lease.release()
    for rival in ledger.rivals:
        await rival.release()


async def test_a_wakeup_lost_to_another_process_waits_on_without_reading_again(fake_clock: FakeLoopClock) -> None:
    """A release wakes the caller on "k", another process leases it first: the refusal says the key is full
    again and nothing else woke the caller, so it waits on with no read, and the next release is leased."""
    ledger = RivalLedger()
    holder, other = await _hold(ledger, "k", "j")
    admitting = asyncio.create_task(Admission(ledger).admit([Candidate("a", "k", CAP), Candidate("b", "j", CAP)]))
    await settle(admitting)
    ledger.taken_on_wakeup.add("k")
    await holder.release()
    await settle(admitting)
    assert not admitting.done()
    await other.release()
    admitted = await asyncio.wait_for(admitting, 5)

    assert admitted is not None
    assert admitted.candidate.name == "b"
    # the first choice refused, one read; "k" woken and lost; "j" woken and leased
    assert ledger.calls == {"acquire_or_status": 3, "statuses": 1}
    assert admitted.lease is not None
    await admitted.lease.release()


async def test_an_idle_first_choice_is_leased_before_anything_is_read_under_headroom_routing() -> None:
    """Ranked by headroom, ties in the candidates' order: an idle first candidate outranks nobody can, so it is
    leased with one call (not when it is only partly free: then every status is read and the idler one wins,
    and the next admission asks for the first candidate's idle lease together with the others' statuses, until
    one finds the first candidate idle again)."""
    ledger, two = CountingLedger(), AgentCapacity(max_concurrent=2)
    candidates = [Candidate("a", "k", two), Candidate("b", "j", two)]
    admission = Admission(ledger)

    first = await admission.admit(candidates, order=by_headroom, first_if_idle=True)
    assert first is not None
    assert first.candidate.name == "a"
    assert ledger.calls == {"acquire_or_status": 1}

    ledger.calls.clear()  # "a" is half used now: "b" ranks first
    second = await admission.admit(candidates, order=by_headroom, first_if_idle=True)
    assert second is not None
    assert second.candidate.name == "b"
    assert ledger.calls == {"acquire_or_status": 2, "statuses": 1}  # "a" refused as not idle, read, "b" leased

    ledger.calls.clear()  # both half used: the last look found "a" not idle, so its idle lease goes with the read
    third = await admission.admit(candidates, order=by_headroom, first_if_idle=True)
    assert third is not None
    assert third.candidate.name == "a"
    assert ledger.calls == {"acquire_or_status": 2, "statuses": 1}  # "a" refused as not idle, "b" read; "a" leased

    for admitted in (first, second, third):
        assert admitted.lease is not None
        await admitted.lease.release()
    ledger.calls.clear()  # idle again: leased with the others' read, and the next admission leases first alone
    await (await admission.admit(candidates, order=by_headroom, first_if_idle=True)).lease.release()  # type: ignore[union-attr]
    assert ledger.calls == {"statuses": 1, "acquire_or_status": 1}
    ledger.calls.clear()
    await (await admission.admit(candidates, order=by_headroom, first_if_idle=True)).lease.release()  # type: ignore[union-attr]
    assert ledger.calls == {"acquire_or_status": 1}


class _ReadFails(CountingLedger):
    """A ledger whose status reads fail (Redis went away between two scripts of one batch)."""

    async def statuses(self, keys: object) -> dict[str, KeyStatus]:  # type: ignore[override]
        await asyncio.sleep(0)  # the lease beside it is granted meanwhile
        raise RuntimeError("the read failed")


async def test_a_lease_taken_beside_a_failed_read_is_given_back() -> None:
    """Under load the first choice's idle lease goes together with the others' read: when the read fails, the
    lease it got is given back, not left held."""
    ledger = _ReadFails()
    candidates = [Candidate("a", "k", CAP), Candidate("b", "j", CAP)]
    admission = Admission(ledger)
    admission._first_idle = False  # the last look found "a" busy
    with pytest.raises(RuntimeError, match="the read failed"):
        await admission.admit(candidates, order=by_headroom, first_if_idle=True)
    assert ledger.calls["acquire_or_status"] == 1
    assert (await ledger.snapshot())["k"].in_flight == 0
