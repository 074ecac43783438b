"""The limit arithmetic every ledger shares: the rpm leaky bucket, the sliding tpm window, and a key's status.

Pure: no clock, no I/O; time is passed in. ``InMemoryLedger`` calls these functions; ``RedisLedger``'s Lua
scripts implement the same rules in the same order (``tests/test_limits.py`` runs both on one table of cases).
"""

from __future__ import annotations

from collections.abc import Iterable

from .base import KeyStatus

__all__ = ["IDLE", "RATE_SLACK", "TOKEN_WINDOW_S", "bucket_burst", "key_status", "leaked", "tokens_ready_in"]

IDLE = KeyStatus(1.0)
"""A key with room for anything (idle or unbounded): one shared status, as statuses are read per member a turn."""

TOKEN_WINDOW_S = 60.0
"""The tpm window: tokens recorded in the last 60 s count against ``tpm``."""

RATE_SLACK = 1e-6
"""Bucket level (in requests) forgiven as float rounding: a bucket that leaked for exactly its ``ready_in``
must admit, not report itself 1e-14 requests short (a fake or frozen clock would wait on that forever)."""


def bucket_burst(rpm: float) -> float:
    """The rpm bucket's size: ``max(rpm, 1)`` requests at once."""
    return max(rpm, 1.0)


def leaked(level: float, at: float, now: float, rpm: float) -> float:
    """The bucket's level at ``now``, given ``level`` at ``at``: it leaks ``rpm / 60`` requests a second. A level
    within :data:`RATE_SLACK` above one request short of full counts as exactly one short (it admits)."""
    if level > 0 and now > at:
        level = max(level - (now - at) * rpm / 60.0, 0.0)
    room = bucket_burst(rpm) - 1.0
    if room < level <= room + RATE_SLACK:
        level = room
    return level


def tokens_ready_in(entries: Iterable[tuple[float, int]], used: int, tpm: int, now: float) -> float:
    """Seconds until the tokens in the window (``entries``, oldest first, ``used`` in all) drop below ``tpm``."""
    remaining = used
    for stamp, tokens in entries:
        remaining -= tokens
        if remaining < tpm:
            return stamp + TOKEN_WINDOW_S - now
    return 0.0


def key_status(
    *,
    now: float,
    exhausted_until: float,
    cooldown_until: float,
    free_slots: int | None,
    max_concurrent: int | None,
    rate_level: float,
    rpm: float | None,
    tokens_used: int,
    tpm: int | None,
    token_entries: Iterable[tuple[float, int]] = (),
) -> KeyStatus:
    """Whether a key admits one more unit of work now: exhausted, then cooling down, then slots
    (``free_slots`` of ``max_concurrent``), the rpm bucket (``rate_level``, leaked to ``now``), the tpm window
    (``tokens_used`` of ``tpm``). Its headroom is the smallest share left of any limit."""
    if exhausted_until > now:
        return KeyStatus(0.0, "exhausted", exhausted_until - now)
    if cooldown_until > now:
        return KeyStatus(0.0, "cooldown", cooldown_until - now)
    headroom = 1.0
    if max_concurrent is not None and free_slots is not None:
        if free_slots <= 0:
            return KeyStatus(0.0, "slots")
        headroom = free_slots / max_concurrent
    if rpm is not None:
        burst = bucket_burst(rpm)
        if rate_level + 1 > burst:
            return KeyStatus(0.0, "rate", (rate_level + 1 - burst) / (rpm / 60.0))
        headroom = min(headroom, 1 - rate_level / burst)
    if tpm is not None:
        if tokens_used >= tpm:
            return KeyStatus(0.0, "tpm", tokens_ready_in(token_entries, tokens_used, tpm, now))
        headroom = min(headroom, 1 - tokens_used / tpm)
    return IDLE if headroom == 1.0 else KeyStatus(headroom)
