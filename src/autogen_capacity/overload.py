"""Recognising overload in the exceptions real SDKs raise: throttled (try later) or exhausted (never retry)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .exceptions import Overloaded
from .headers import parse_rate_limit_headers

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
    an HTTP date, on the response or on the exception; without them, the reset of the limit that ran out, from
    OpenAI's ``x-ratelimit-reset-*`` durations such as ``"6m0s"`` or Anthropic's ``anthropic-ratelimit-*-reset``
    times, all read by :func:`~autogen_capacity.headers.parse_rate_limit_headers`); a status
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


def _retry_after(headers: Any) -> float | None:
    """Seconds from the provider's headers (:func:`~autogen_capacity.headers.parse_rate_limit_headers`): its
    Retry-After, else the reset of the limit that ran out, else the later of the resets it reports."""
    limits = parse_rate_limit_headers(headers)
    if limits is None:
        return None
    if limits.wait_s is not None:
        return limits.wait_s
    resets = [w.reset_in for w in (limits.requests, limits.tokens) if w.reset_in is not None]
    return max(resets) if resets else None


Overload = OverloadSignal
"""Deprecated alias of :class:`OverloadSignal` (0.1.0's name), kept for one release."""
