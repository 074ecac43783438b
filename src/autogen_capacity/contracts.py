"""The capacity contract a provider declares: :class:`AgentCapacity` and its aggregation rules."""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from typing_extensions import Self

from .backoff import BackoffStrategy, compute_delay, jittered, total_delay

__all__ = ["AgentCapacity", "AggregateMode", "RetryBudget"]

AggregateMode = Literal["pool", "pipeline"]
"""``pool``: any one member serves a turn (slots and rates add up); ``pipeline``: every member speaks in
turn (the slowest member bounds the team)."""

_Key = Annotated[str, StringConstraints(min_length=1, strip_whitespace=False)]


class AgentCapacity(BaseModel):
    """What a provider can take, and how its callers must back off.

    ``None`` means unbounded for every limit. Time fields are integer milliseconds as in the original
    proposal; inside the library time is float seconds of the running loop's clock.

    Examples:
        >>> cap = AgentCapacity(max_concurrent=3, backoff_strategy="exponential", backoff_initial_ms=1000,
        ...                     backoff_ceiling_ms=30000, max_caller_retries=5)
        >>> cap.backoff_schedule()
        (1.0, 2.0, 4.0, 8.0, 16.0)

    .. versionadded:: 0.1.0
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_concurrent: int | None = Field(default=None, ge=1)
    """Turns (leases) this provider serves at once. ``None``: unbounded."""

    rpm: float | None = Field(default=None, gt=0)
    """Requests a minute, as a leaky bucket: up to ``max(rpm, 1)`` at once, refilled at ``rpm / 60`` a second."""

    tpm: int | None = Field(default=None, gt=0)
    """Model tokens a minute, debited from each response's ``models_usage`` over a sliding 60 s window."""

    max_queue: int | None = Field(default=None, ge=0)
    """Callers allowed to wait for this provider at once; one more is refused at once. ``None``: unbounded."""

    key: _Key | None = None
    """Ledger key shared by agents backed by one resource. ``None``: the participant's name."""

    backoff_strategy: BackoffStrategy = "exponential"
    """How the delay grows between retries: ``exponential``, ``linear`` or ``constant``."""

    backoff_initial_ms: int = Field(default=1000, ge=0)
    """The first retry's delay in milliseconds."""

    backoff_ceiling_ms: int = Field(default=30000, ge=0)
    """No delay is longer than this, in milliseconds (must be >= ``backoff_initial_ms``)."""

    backoff_multiplier: float = Field(default=2.0, ge=1.0)
    """Growth factor of the exponential strategy."""

    backoff_jitter: bool = True
    """Full jitter: each wait is a uniform draw from ``[0, delay]`` (gRPC A6)."""

    max_caller_retries: int = Field(default=5, ge=0)
    """Waits a caller may make before giving up with ``Capacity exhausted``."""

    max_retry_after_ms: int = Field(default=60_000, ge=0)
    """The longest provider hint (Retry-After, ``x-ratelimit-reset-*``) a caller waits out, in milliseconds.
    A provider's hint extends a wait beyond the schedule up to this; a longer one ends the wait at once with
    ``Capacity exhausted`` carrying ``retry_after``."""

    @model_validator(mode="after")
    def _ceiling_not_below_initial(self) -> Self:
        if self.backoff_ceiling_ms < self.backoff_initial_ms:
            msg = (
                f"backoff_ceiling_ms ({self.backoff_ceiling_ms}) must be >= "
                f"backoff_initial_ms ({self.backoff_initial_ms})"
            )
            raise ValueError(msg)
        return self

    @property
    def is_bounded(self) -> bool:
        """Whether any admission limit (slots, rpm or tpm) is declared."""
        return self.max_concurrent is not None or self.rpm is not None or self.tpm is not None

    def delay(self, attempt: int) -> float:
        """The un-jittered delay in seconds before retry ``attempt`` (1-based)."""
        return compute_delay(
            attempt,
            strategy=self.backoff_strategy,
            initial=self.backoff_initial_ms / 1000,
            ceiling=self.backoff_ceiling_ms / 1000,
            multiplier=self.backoff_multiplier,
        )

    def backoff_total(self) -> float:
        """The sum of :meth:`backoff_schedule` in seconds: how long a caller waits by the schedule at most."""
        return total_delay(
            self.max_caller_retries,
            strategy=self.backoff_strategy,
            initial=self.backoff_initial_ms / 1000,
            ceiling=self.backoff_ceiling_ms / 1000,
            multiplier=self.backoff_multiplier,
        )

    def backoff_schedule(self) -> tuple[float, ...]:
        """The un-jittered delays in seconds for retries ``1..max_caller_retries``."""
        return tuple(self.delay(k) for k in range(1, self.max_caller_retries + 1))

    def jittered_delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The delay before retry ``attempt``, with full jitter when ``backoff_jitter`` is set."""
        delay = self.delay(attempt)
        return jittered(delay, rng) if self.backoff_jitter else delay

    @classmethod
    def aggregate(
        cls,
        contracts: Iterable[AgentCapacity | None],
        mode: AggregateMode = "pool",
        *,
        cap: AgentCapacity | None = None,
    ) -> AgentCapacity | None:
        """The contract of a group of providers.

        ``pool`` sums slots, rpm and tpm (unbounded when any member is unbounded); ``pipeline`` takes the
        minimum, ignoring unbounded members. A ``key`` is one backend: members sharing it count once, with
        the smallest limit any of them declares (see :func:`backends`). Backoff fields come from the most
        conservative member (the largest delays, the fewest retries). ``cap`` (a team's declared contract)
        then caps the limits field by field (the smaller wins) and, when given, supplies the backoff fields.

        Returns ``None`` when there are no contracts and no ``cap``. A ``None`` member counts as an
        unbounded member.
        """
        members = list(contracts)
        declared = [c for c in members if c is not None]
        if not declared:
            return cap
        groups = [[members[i] for i in group] for group in backends(members)]
        limits = {field: _combine([_backend_limit(g, field) for g in groups], mode) for field in LIMIT_FIELDS}
        backoff = _most_conservative_backoff(declared)
        if cap is not None:
            limits = {field: _smaller(value, getattr(cap, field)) for field, value in limits.items()}
            backoff = _backoff_fields(cap)
        return cls.model_validate({**limits, **backoff, "key": cap.key if cap is not None else None})

    adaptive: bool = False
    """Learn a live concurrency limit per key from the provider's answers (429s, latency): the declared
    ``max_concurrent`` becomes its ceiling, and the live limit stays between 1 and it. See ``docs/adaptive.md``."""

    initial_concurrent: int | None = Field(default=None, ge=1)
    """Where an adaptive key's live limit starts; ``None``: at ``max_concurrent``."""

    @model_validator(mode="after")
    def _adaptive_start_within_ceiling(self) -> Self:
        if self.initial_concurrent is None:
            return self
        if not self.adaptive or self.max_concurrent is None:
            msg = "initial_concurrent needs adaptive=True and a max_concurrent"
            raise ValueError(msg)
        if self.initial_concurrent > self.max_concurrent:
            msg = f"initial_concurrent ({self.initial_concurrent}) must be <= max_concurrent ({self.max_concurrent})"
            raise ValueError(msg)
        return self


LIMIT_FIELDS = ("max_concurrent", "rpm", "tpm", "max_queue")
"""The admission limits :meth:`AgentCapacity.aggregate` combines."""


def backends(contracts: Sequence[AgentCapacity | None]) -> list[list[int]]:
    """The positions of ``contracts`` grouped by backend, in order of first appearance.

    Contracts sharing a ``key`` are one backend; any other contract (or ``None``) is a backend of its own.
    """
    groups: dict[object, list[int]] = {}
    for i, contract in enumerate(contracts):
        key: object = contract.key if contract is not None and contract.key else i
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def _backend_limit(group: list[AgentCapacity | None], field: str) -> int | float | None:
    """One backend's limit: the smallest its contracts declare (``None`` when none bounds it)."""
    value: int | float | None = None
    for contract in group:
        value = _smaller(value, getattr(contract, field) if contract is not None else None)
    return value


def ledger_key(contract: AgentCapacity | None, name: str) -> str:
    """The key a provider is tracked under: its contract's ``key``, else its name."""
    return contract.key if contract is not None and contract.key else name


def declared_contract(provider: object) -> AgentCapacity | None:
    """The contract an agent or team declares on itself (a ``capacity`` attribute holding one), if any."""
    own = getattr(provider, "capacity", None)
    return own if isinstance(own, AgentCapacity) else None


_BACKOFF_FIELDS = (
    "backoff_strategy",
    "backoff_initial_ms",
    "backoff_ceiling_ms",
    "backoff_multiplier",
    "backoff_jitter",
    "max_caller_retries",
    "max_retry_after_ms",
)


def _backoff_fields(contract: AgentCapacity) -> dict[str, object]:
    return {field: getattr(contract, field) for field in _BACKOFF_FIELDS}


def _most_conservative_backoff(contracts: list[AgentCapacity]) -> dict[str, object]:
    """The member whose schedule waits longest overall, with the fewest retries of any member."""
    slowest = max(contracts, key=lambda c: (c.backoff_ceiling_ms, c.backoff_initial_ms, c.backoff_multiplier))
    fields = _backoff_fields(slowest)
    fields["max_caller_retries"] = min(c.max_caller_retries for c in contracts)
    return fields


def _combine(values: list[int | float | None], mode: AggregateMode) -> int | float | None:
    if mode == "pool":
        if any(v is None for v in values):
            return None
        return sum(v for v in values if v is not None)
    bounded = [v for v in values if v is not None]
    return min(bounded) if bounded else None


def _smaller(a: int | float | None, b: int | float | None) -> int | float | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


class RetryBudget(BaseModel):
    """A team-wide cap on retries, like Envoy's retry budget: ``min_retries`` plus ``ratio`` times the turns
    completed in the run. Waits that end without admission and turns rerouted after an overload both
    spend it, so a storm cannot multiply work.

    .. versionadded:: 0.1.0
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    ratio: float = Field(default=0.2, ge=0)
    """Retries allowed per completed turn."""

    min_retries: int = Field(default=10, ge=0)
    """Retries allowed however few turns have completed."""

    def allows(self, retries: int, turns: int) -> bool:
        """Whether ``retries`` spent stay within the budget after ``turns`` completed turns."""
        return retries <= self.min_retries + self.ratio * turns
