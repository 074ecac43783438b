"""The errors autogen_capacity raises on purpose.

* CapacityError                       base for everything raised on purpose
  x ConfigError (ValueError)          a team's or a ledger's configuration cannot work (routing and model client
                                      disagree, an unset ledger URL variable, a file the audit cannot read)
    x ContractError                   contracts conflict with the team (unknown or duplicate participant names)
  x CapacityExhausted                 no participant could take the work within the contract; .snapshot, .retry_after
    x QueueFull                       a key's ``max_queue`` waiters are already waiting, or this one was shed
      x LineFull                      (``autogen_capacity.priority``) a full line has nobody of a lower class to shed
  x LedgerUnavailable                 the ledger's backend (Redis) cannot be reached; never silent admission
  x LedgerClosed (RuntimeError)       a ledger used after ``aclose()``
* Overloaded                          raised by an agent or tool on purpose to signal overload (not a CapacityError)

Names: an error is named for the condition it reports (``CapacityExhausted``, ``QueueFull``, ``LedgerClosed``);
the base classes end in ``Error``. ``LedgerClosedError`` is a deprecated alias of ``LedgerClosed`` for one
release.

Warnings (``warnings.warn``: shown once per place, filterable like any other):

* CapacityConfigWarning (UserWarning) a configuration hazard to fix before deployment: a model client that
                                      retries by itself, a participant ``capacity`` that is no contract, a parent
                                      team that does not relay a nested team's capacity events

Pydantic's ``ValidationError`` is raised as pydantic raises it for invalid contracts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

__all__ = [
    "CapacityConfigWarning",
    "CapacityError",
    "CapacityExhausted",
    "ConfigError",
    "ContractError",
    "LedgerClosed",
    "LedgerUnavailable",
    "Overloaded",
    "QueueFull",
]


class CapacityError(Exception):
    """Base class of every error autogen_capacity raises on purpose."""


class CapacityConfigWarning(UserWarning):
    """A configuration hazard a developer should fix: the team works, but not as the config seems to say.

    Filter it like any warning, e.g. ``warnings.filterwarnings("error", category=CapacityConfigWarning)`` in CI.

    .. versionadded:: 0.1.0
    """


class ConfigError(CapacityError, ValueError):
    """A team's or a ledger's configuration cannot work: routing and model client disagree, a ledger's URL
    variable is unset, a config file cannot be read. Also a ``ValueError``, as before."""


class ContractError(ConfigError):
    """Contracts conflict with the team: a ``capacities`` entry names no participant, and the like."""


class CapacityExhausted(CapacityError):
    """No participant could take the work within its contract.

    Raised by a team built with ``on_exhausted="raise"``, by the capacity-aware tools and by
    :func:`autogen_capacity.acquire` once the contracted retries are used up.

    Args:
        message: What was exhausted, naming the keys and the reason.
        snapshot: The ledger's usage per key when the caller gave up.
        retry_after: Seconds after which a new attempt may succeed, when known.
    """

    def __init__(
        self,
        message: str,
        *,
        snapshot: Mapping[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.snapshot: Mapping[str, Any] = dict(snapshot or {})
        self.retry_after = retry_after


class QueueFull(CapacityExhausted):
    """A key's ``max_queue`` callers are already waiting, so this caller is refused at once."""


class LedgerUnavailable(CapacityError):
    """The ledger's backend cannot be reached. Admission is refused rather than granted blindly."""


class LedgerClosed(CapacityError, RuntimeError):
    """A ledger was used after :meth:`aclose`."""


class Overloaded(Exception):
    """Raised on purpose by an agent or tool to say it is overloaded.

    A capacity-aware team or tool treats it like an HTTP 429 (``kind="throttled"``) or like a spent
    quota (``kind="exhausted"``).

    Args:
        message: A human-readable reason.
        retry_after: Seconds the caller should wait before trying this provider again.
        kind: ``"throttled"`` (try again later) or ``"exhausted"`` (entitlement gone: never retried).
    """

    def __init__(
        self,
        message: str = "overloaded",
        *,
        retry_after: float | None = None,
        kind: Literal["throttled", "exhausted"] = "throttled",
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.kind: Literal["throttled", "exhausted"] = kind


LedgerClosedError = LedgerClosed
"""Deprecated alias of :class:`LedgerClosed` (0.1.0's name), kept for one release."""
