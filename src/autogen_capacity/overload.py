"""Recognising overload in the exceptions real SDKs raise: throttled (try later) or exhausted (never retry)."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Literal

from .exceptions import Overloaded

__all__ = ["OverloadClassifier", "OverloadSignal", "classify_overload"]

_THROTTLED_STATUS = frozenset({429, 503})
_EXHAUSTED_STATUS = 402
_EXHAUSTED_CODES = frozenset({"insufficient_quota"})
_MAX_CHAIN = 8


@dataclass(frozen=True, slots=True)
class OverloadSignal:
    """What an overload signal means for routing."""

    kind: Literal["throttled", "exhausted"]
    """``throttled``: cool the provider down and try it later; ``exhausted``: its entitlement is gone."""
    retry_after_s: float | None = None
    """The provider's hint (Retry-After), in seconds; it replaces the backoff schedule for that wait."""


OverloadClassifier = Callable[[BaseException], "OverloadSignal | None"]
"""Maps an exception to an :class:`OverloadSignal`, or ``None`` when it is an ordinary error."""


def classify_overload(exc: BaseException) -> OverloadSignal | None:
    """Classify ``exc`` (or an exception it was raised from) as an overload signal.

    Recognised: :class:`~autogen_capacity.Overloaded`; a ``status_code`` or ``status`` of 429 or 503 on the
    exception or on ``exc.response`` (with ``retry-after-ms`` or ``Retry-After`` headers, in seconds or as
    an HTTP date, on the response or on the exception; without them, OpenAI's ``x-ratelimit-reset-requests``
    / ``-tokens`` durations such as ``"6m0s"``, for the limit whose ``x-ratelimit-remaining-*`` is 0); a status
    of 402 or an error code ``insufficient_quota`` (OpenAI's spent quota) as exhausted. The chain of ``__cause__`` /
    ``__context__`` is followed (``raise ... from None`` ends it). Anything else is an ordinary error:
    ``None``.

    .. versionadded:: 0.1.0
    """
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < _MAX_CHAIN:
        overload = _classify_one(current)
        if overload is not None:
            return overload
        # ``raise X from None`` severs the chain, as it does for tracebacks.
        current = (
            current.__cause__ if current.__cause__ is not None or current.__suppress_context__ else current.__context__
        )
        seen += 1
    return None


def _classify_one(exc: BaseException) -> OverloadSignal | None:
    if isinstance(exc, Overloaded):
        return OverloadSignal(exc.kind, exc.retry_after)
    response = getattr(exc, "response", None)
    status = _status(exc) or _status(response)
    if status == _EXHAUSTED_STATUS or _error_code(exc) in _EXHAUSTED_CODES:
        return OverloadSignal("exhausted")
    if status in _THROTTLED_STATUS:
        # Headers live on the response (httpx: openai, anthropic) or on the exception itself (aiohttp).
        return OverloadSignal(
            "throttled", _retry_after(getattr(response, "headers", None) or getattr(exc, "headers", None))
        )
    return None


def _status(obj: object) -> int | None:
    for attribute in ("status_code", "status"):
        value = getattr(obj, attribute, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _error_code(exc: BaseException) -> str | None:
    code = getattr(exc, "code", None)
    if isinstance(code, str):
        return code
    body = getattr(exc, "body", None)
    if isinstance(body, Mapping):
        nested = body.get("error", body)
        if isinstance(nested, Mapping):
            value = nested.get("code") or nested.get("type")
            return value if isinstance(value, str) else None
    return None


def _header(headers: Any, name: str) -> str | None:
    if headers is None:
        return None
    try:
        items = headers.items()
    except AttributeError:
        return None
    for key, value in items:
        if isinstance(key, str) and key.lower() == name:
            return str(value)
    return None


def _retry_after(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms`` or ``Retry-After`` (delta seconds or HTTP date); ``None`` if absent."""
    milliseconds = _header(headers, "retry-after-ms")
    if milliseconds is not None:
        try:
            seconds = _seconds(float(milliseconds) / 1000)
        except ValueError:
            seconds = None
        if seconds is not None:
            return seconds
    value = _header(headers, "retry-after")
    if value is None:
        return _reset_hint(headers)
    try:
        return _seconds(float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|m|s|us|µs|ns)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def _reset_hint(headers: Any) -> float | None:
    """Seconds from OpenAI's ``x-ratelimit-reset-requests`` / ``-tokens`` (``"1s"``, ``"6m0s"``, ``"20ms"``):
    the reset of the limit that ran out (``x-ratelimit-remaining-*: 0``), else the later of the two."""
    resets: dict[str, float] = {}
    for limit in ("requests", "tokens"):
        value = _header(headers, f"x-ratelimit-reset-{limit}")
        seconds = _duration(value) if value is not None else None
        if seconds is not None:
            resets[limit] = seconds
    if not resets:
        return None
    spent = [limit for limit in resets if (_header(headers, f"x-ratelimit-remaining-{limit}") or "").strip() == "0"]
    return max(resets[limit] for limit in spent or resets)


def _duration(text: str) -> float | None:
    """A Go-style duration (``"1h2m3.5s"``, ``"20ms"``) or plain seconds, as seconds; ``None`` if malformed."""
    text = text.strip()
    try:
        return _seconds(float(text))
    except ValueError:
        pass
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return None
    return _seconds(sum(float(number) * _UNIT_S[unit] for number, unit in parts))


def _seconds(value: float) -> float | None:
    """A hint as non-negative seconds; ``inf`` or ``nan`` is no hint (it would take a key out forever)."""
    return max(value, 0.0) if math.isfinite(value) else None


Overload = OverloadSignal
"""Deprecated alias of :class:`OverloadSignal` (0.1.0's name), kept for one release."""
