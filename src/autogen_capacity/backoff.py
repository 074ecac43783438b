"""Pure backoff arithmetic: the delay before retry *k*, with optional full jitter.

Nothing here sleeps or reads a clock; callers pass an injected :class:`random.Random` when they want
repeatable jitter (tests, simulations).
"""

from __future__ import annotations

import random
from typing import Literal

__all__ = ["BackoffStrategy", "compute_delay", "jittered", "total_delay"]

BackoffStrategy = Literal["exponential", "linear", "constant"]
"""How the un-jittered delay grows with the retry number."""


def compute_delay(
    attempt: int,
    *,
    strategy: BackoffStrategy,
    initial: float,
    ceiling: float,
    multiplier: float = 2.0,
) -> float:
    """The un-jittered delay in seconds before retry ``attempt`` (1-based).

    exponential: ``min(initial * multiplier**(attempt-1), ceiling)``; linear: ``min(initial * attempt,
    ceiling)``; constant: ``min(initial, ceiling)``.

    Raises:
        ValueError: ``attempt`` is smaller than 1.
    """
    if attempt < 1:
        msg = f"attempt is 1-based, got {attempt}"
        raise ValueError(msg)
    if strategy == "exponential":
        # Exponents grow fast: stop multiplying once the ceiling is reached (no float overflow). A delay
        # that cannot grow (zero initial delay, multiplier 1) would never reach it: skip the loop.
        delay = initial
        if initial > 0 and multiplier > 1:
            for _ in range(attempt - 1):
                if delay >= ceiling:
                    break
                delay *= multiplier
    elif strategy == "linear":
        delay = initial * attempt
    else:
        delay = initial
    return min(delay, ceiling)


def total_delay(
    retries: int,
    *,
    strategy: BackoffStrategy,
    initial: float,
    ceiling: float,
    multiplier: float = 2.0,
) -> float:
    """The sum of the un-jittered delays of retries ``1..retries``, without computing each one (a contract may
    allow thousands of retries)."""
    if retries <= 0:
        return 0.0
    if strategy == "constant" or initial <= 0 or (strategy == "exponential" and multiplier <= 1):
        return retries * min(initial, ceiling)
    if strategy == "linear":
        growing = min(retries, int(ceiling // initial))  # retries whose delay is still below the ceiling
        return initial * growing * (growing + 1) / 2 + (retries - growing) * ceiling
    total, delay, attempt = 0.0, initial, 0
    while attempt < retries and delay < ceiling:
        total += delay
        delay *= multiplier
        attempt += 1
    return total + (retries - attempt) * ceiling


def jittered(delay: float, rng: random.Random | None = None) -> float:
    """Full jitter (gRPC A6, AWS): a uniform draw from ``[0, delay]``."""
    return (rng or random).uniform(0.0, delay)
