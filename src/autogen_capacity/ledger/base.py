"""The ledger protocol every backend implements, and the data it hands out."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Protocol, runtime_checkable

from ..contracts import AgentCapacity
from ..priority import Priority

__all__ = [
    "BlockReason",
    "CapacityLedger",
    "KeyStatus",
    "KeyUsage",
    "Lease",
    "LedgerSnapshot",
    "LiveLimitChange",
    "WaitQueue",
]

BlockReason = Literal["slots", "rate", "tpm", "cooldown", "exhausted"]
"""Why a key admits nothing now: every slot is taken, the rpm bucket is full, the tpm window is spent,
it is cooling down after an overload, or its entitlement is exhausted."""


@dataclass(frozen=True, slots=True)
class KeyStatus:
    """Whether a key can take one more unit of work now, and if not, why and for how long."""

    headroom: float
    """From 0 (saturated) to 1 (idle or unbounded)."""
    blocked_by: BlockReason | None = None
    """Why nothing is admitted now; ``None`` when a lease would be granted."""
    ready_in: float | None = None
    """Seconds until the key admits again without any release (a refill, a cooldown's end); ``None`` when
    it is not blocked or only a release can help."""


@dataclass(frozen=True, slots=True)
class KeyUsage:
    """One key's usage, as shown by :meth:`CapacityLedger.snapshot`."""

    in_flight: int
    """Leases held now."""
    waiting: int = 0
    """Callers waiting for this key now (this process for the in-memory ledger)."""
    acquired: int = 0
    """Leases granted since the ledger started."""
    tokens_last_minute: int = 0
    """Tokens recorded in the sliding 60 s window."""
    cooling_down_for: float = 0.0
    """Seconds of cooldown left."""
    exhausted_for: float = 0.0
    """Seconds left before an exhausted key is routed to again."""
    live_limit: int | None = None
    """An adaptive key's live concurrency limit now (``None``: not adaptive, or not tracked by this ledger)."""
    ceiling: int | None = None
    """An adaptive key's declared ``max_concurrent``: its live limit is never above it."""
    limit_steady_for: float | None = None
    """Seconds since an adaptive key's live limit last moved (since it was first used, if never)."""
    overload_rate: float = 0.0
    """An adaptive key's recent share of throttled answers: an exponentially weighted mean over its answers
    (each weighs ``OVERLOAD_RATE_ALPHA``), 0 for a key that has been healthy, rising with each 429."""


@dataclass(frozen=True, slots=True)
class LiveLimitChange:
    """An adaptive key's live concurrency limit moved, as :meth:`CapacityLedger.observe` reports it."""

    key: str
    old: int
    new: int
    ceiling: int
    """The contract's ``max_concurrent``: the live limit is never above it."""
    reason: str
    """``throttled`` (a 429 dropped it), ``probe_failed`` (a step up answered 429 and retreated), ``latency``
    (latency rose above its baseline), ``probe`` (a window at the limit without overload stepped it up) or
    ``ceiling`` (the contract moved under it)."""


LedgerSnapshot = Mapping[str, KeyUsage]
"""Usage per key."""


class Lease:
    """One admitted unit of work on a key. Released exactly once: :meth:`release` is idempotent.

    Use it as an async context manager to release it on the way out, whatever happens.
    """

    __slots__ = ("_on_release", "_released", "acquired_at", "key", "lease_id")

    def __init__(
        self, key: str, lease_id: str, acquired_at: float, on_release: Callable[[Lease], Awaitable[None]]
    ) -> None:
        self.key = key
        self.lease_id = lease_id
        self.acquired_at = acquired_at
        self._on_release = on_release
        self._released = False

    @property
    def released(self) -> bool:
        """Whether the lease has been given back."""
        return self._released

    async def release(self) -> None:
        """Give the slot back and wake the oldest waiter. A second call does nothing."""
        if self._released:
            return
        self._released = True
        await self._on_release(self)

    async def __aenter__(self) -> Lease:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.release()

    def __repr__(self) -> str:
        state = "released" if self._released else "held"
        return f"<Lease {self.key!r} {self.lease_id} {state}>"


class WaitQueue(Protocol):
    """A caller's place in the waiting lines of one or more keys, kept from one wait to the next: a wait
    that times out does not lose it (FIFO). Leave it when done, whatever happens."""

    async def wait(self, timeout: float) -> bool:
        """Wait for a release (handed to the oldest waiter first), a refill or a cooldown's end on one of
        the keys. ``True`` when woken (also by a wake-up that arrived since the last wait), ``False`` when
        ``timeout`` passed."""
        ...

    async def leave(self) -> None:
        """Leave every line, passing on a released slot that was handed to this caller and not taken."""
        ...

    @property
    def woken_by(self) -> str | None:
        """The key whose release, refill or cooldown's end woke the last :meth:`wait`, when known: the key most
        likely to admit this caller now (``None``: not woken, or the ledger cannot tell)."""
        ...

    def expected_wait(self) -> float | None:
        """Seconds until this caller is likely served (its place in line times the time a slot is held), or
        ``None`` when the ledger cannot tell."""
        ...


@runtime_checkable
class CapacityLedger(Protocol):
    """The shared record of usage per key. :class:`InMemoryLedger` serves one process;
    ``RedisLedger`` many processes and hosts. Every method reads time from the ledger's own clock
    (the running loop's for the in-memory ledger)."""

    async def try_acquire(self, key: str, capacity: AgentCapacity) -> Lease | None:
        """Admit one unit of work on ``key`` atomically, or return ``None`` at once. Never blocks."""
        ...

    async def acquire_or_status(
        self, key: str, capacity: AgentCapacity, *, idle_only: bool = False
    ) -> Lease | KeyStatus:
        """:meth:`try_acquire`, returning on refusal the status that refused it, read in the same atomic step (its
        ``blocked_by`` is set): what a caller that lost a race reports and waits by, with no second read. With
        ``idle_only``, a key is leased only when its headroom is 1 (nothing can rank above it); else its status is
        returned (``blocked_by`` is ``None`` when it would have admitted)."""
        ...

    async def status(self, key: str, capacity: AgentCapacity) -> KeyStatus:
        """Whether ``key`` would admit now, its headroom, and why not."""
        ...

    async def statuses(self, keys: Mapping[str, AgentCapacity]) -> dict[str, KeyStatus]:
        """:meth:`status` of several keys at once (one round trip for a remote ledger)."""
        ...

    async def headroom(self, key: str, capacity: AgentCapacity) -> float:
        """How much more ``key`` can take now, from 0 (saturated) to 1 (idle or unbounded)."""
        ...

    async def wait_for_change(self, waits: Mapping[str, AgentCapacity], timeout: float) -> bool:
        """Wait until one of the keys may admit again: a release (handed to the oldest waiter first), a
        refill or a cooldown's end. Returns ``True`` when woken, ``False`` when ``timeout`` passed.

        Raises:
            QueueFull: every key already has its ``max_queue`` callers waiting.
        """
        ...

    async def join_queue(self, waits: Mapping[str, AgentCapacity], *, priority: Priority = "default") -> WaitQueue:
        """Take a place in the waiting lines of ``waits``' keys, kept until :meth:`WaitQueue.leave`; a freed slot
        goes to the oldest waiter of the highest ``priority`` class present.

        Raises:
            QueueFull: every key already has its ``max_queue`` callers waiting (of this class or higher).
        """
        ...

    async def observe(self, lease: Lease, *, throttled: bool) -> LiveLimitChange | None:
        """What ``lease``'s call answered, told before the lease is released: throttled (a 429) or served. An
        adaptive contract's key learns its live limit from it; the change, when the limit moved."""
        ...

    async def service_time(self, key: str) -> float | None:
        """Seconds a lease on ``key`` is held, on average lately; ``None`` when not known."""
        ...

    async def record_tokens(self, key: str, tokens: int) -> None:
        """Debit ``tokens`` from the key's tpm window."""
        ...

    async def cooldown(self, key: str, seconds: float) -> None:
        """Take ``key`` out of admission for ``seconds`` (extends, never shortens, a running cooldown)."""
        ...

    async def mark_exhausted(self, key: str, seconds: float) -> None:
        """Record that ``key``'s entitlement is gone: nobody sharing the ledger is admitted for ``seconds``."""
        ...

    async def snapshot(self) -> LedgerSnapshot:
        """Usage per key, for dashboards and tests."""
        ...

    async def aclose(self) -> None:
        """Release resources; the ledger refuses work afterwards."""
        ...
