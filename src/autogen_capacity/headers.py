"""What a provider says about its limits in the headers of every answer, successes as well as 429s.

:func:`parse_rate_limit_headers` reads OpenAI's ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``
(resets as Go durations: ``"1s"``, ``"6m0s"``, ``"20ms"``), Anthropic's
``anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}`` (resets as RFC 3339 times), and
``retry-after-ms`` / ``retry-after`` (seconds or an HTTP date) into a :class:`ProviderLimits`.
:func:`rate_limit_hook` makes an httpx response event hook that hands each observation to a callback; a
successful answer's headers are seen nowhere else (an ``AssistantAgent`` only sees the completion)::

    client = httpx2.AsyncClient(event_hooks={"response": [rate_limit_hook(observe)]})
    openai.AsyncOpenAI(http_client=client)

The hook only reads ``response.status_code`` and ``response.headers``, so it serves ``httpx`` and
``httpx2`` (which the ``openai`` SDK 3.x uses) alike; :func:`async_client` builds a client of whichever is
installed, imported lazily.
"""

from __future__ import annotations

import inspect
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Protocol

from ._logging import logger

if TYPE_CHECKING:
    from .ledger import CapacityLedger

__all__ = [
    "LimitWindow",
    "ProviderLimits",
    "async_client",
    "cooldown_observer",
    "parse_rate_limit_headers",
    "rate_limit_hook",
]


@dataclass(frozen=True, slots=True)
class LimitWindow:
    """One rate limit as a provider reports it; each field ``None`` when not reported.

    .. versionadded:: 0.2.0
    """

    limit: int | None = None
    """The most the window allows (requests or tokens)."""
    remaining: int | None = None
    """What is left of it now."""
    reset_in: float | None = None
    """Seconds until it is full again."""

    @property
    def is_spent(self) -> bool:
        """Whether nothing is left."""
        return self.remaining is not None and self.remaining <= 0


@dataclass(frozen=True, slots=True)
class ProviderLimits:
    """One answer's word on the provider's limits.

    .. versionadded:: 0.2.0
    """

    requests: LimitWindow
    tokens: LimitWindow
    retry_after: float | None = None
    """Seconds the provider asked callers to wait (``retry-after-ms``, else ``retry-after``)."""
    status: int | None = None
    """The answer's HTTP status (429 for a throttle), when known."""

    @property
    def is_throttled(self) -> bool:
        """Whether the answer was a throttle (429 or 503)."""
        return self.status in (429, 503)

    @property
    def wait_s(self) -> float | None:
        """How long before a request can be admitted again by the provider's word: ``retry_after``, else the
        reset of a spent window (the later one when both are spent); ``None`` when nothing is spent."""
        if self.retry_after is not None:
            return self.retry_after
        spent = [w.reset_in for w in (self.requests, self.tokens) if w.is_spent and w.reset_in is not None]
        return max(spent) if spent else None


_FRACTION = re.compile(r"\.(\d+)")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|m|s|us|µs|ns)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_OPENAI = "x-ratelimit-{part}-{kind}"
_ANTHROPIC = "anthropic-ratelimit-{kind}-{part}"


def parse_rate_limit_headers(
    headers: Mapping[str, str] | Any, *, status: int | None = None, now: float | None = None
) -> ProviderLimits | None:
    """The rate limits ``headers`` report, or ``None`` when they report none.

    Args:
        headers: Any mapping of header names to values (``httpx.Headers``, a dict); names are matched
            without regard to case.
        status: The answer's HTTP status, kept on the observation.
        now: The wall-clock time (``time.time()``) absolute resets and HTTP dates are measured from;
            ``time.time()`` when ``None``.

    OpenAI's headers win over Anthropic's where both name the same value.

    .. versionadded:: 0.2.0
    """
    found = _lowered(headers)
    if not found:
        return None
    wall = time.time() if now is None else now
    windows = {kind: _window(found, kind, wall) for kind in ("requests", "tokens")}
    retry_after = _retry_after(found, wall)
    if retry_after is None and all(w == LimitWindow() for w in windows.values()):
        return None
    return ProviderLimits(windows["requests"], windows["tokens"], retry_after, status)


def _lowered(headers: Mapping[str, str] | Any) -> dict[str, str]:
    try:
        items = headers.items()
    except AttributeError:
        return {}
    return {str(k).lower(): str(v).strip() for k, v in items}


def _window(found: Mapping[str, str], kind: str, wall: float) -> LimitWindow:
    def value(part: str) -> str | None:
        return found.get(_OPENAI.format(part=part, kind=kind)) or found.get(_ANTHROPIC.format(part=part, kind=kind))

    reset_text = value("reset")
    return LimitWindow(
        limit=_count(value("limit")),
        remaining=_count(value("remaining")),
        reset_in=_reset(reset_text, wall) if reset_text is not None else None,
    )


def _count(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        number = float(text)
    except ValueError:
        return None
    return max(int(number), 0) if math.isfinite(number) else None


def _reset(text: str, wall: float) -> float | None:
    """A reset as seconds from now: a duration (OpenAI) or an RFC 3339 time (Anthropic)."""
    seconds = _duration(text)
    if seconds is not None:
        return seconds
    # Python 3.10's fromisoformat wants "+00:00" for "Z" and 3 or 6 fraction digits.
    iso = _FRACTION.sub(
        lambda m: "." + m.group(1)[:6].ljust(6, "0"), text.replace("Z", "+00:00").replace("z", "+00:00")
    )
    try:
        when = datetime.fromisoformat(iso)
    except ValueError:
        return None
    if when.tzinfo is None:
        return None  # a local time names no instant
    return max(when.timestamp() - wall, 0.0)


def _retry_after(found: Mapping[str, str], wall: float) -> float | None:
    milliseconds = found.get("retry-after-ms")
    if milliseconds is not None:
        seconds = _finite(milliseconds, 1e-3)
        if seconds is not None:
            return seconds
    text = found.get("retry-after")
    if text is None:
        return None
    seconds = _finite(text, 1.0)
    if seconds is not None:
        return seconds
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - wall, 0.0)


def _duration(text: str) -> float | None:
    """A Go-style duration (``"1h2m3.5s"``, ``"20ms"``) or plain seconds, as seconds; ``None`` if malformed."""
    text = text.strip()
    plain = _finite(text, 1.0)
    if plain is not None:
        return plain
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return None
    total = sum(float(number) * _UNIT_S[unit] for number, unit in parts)
    return max(total, 0.0) if math.isfinite(total) else None


def _finite(text: str, unit: float) -> float | None:
    try:
        number = float(text) * unit
    except ValueError:
        return None
    return max(number, 0.0) if math.isfinite(number) else None


class _Response(Protocol):
    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Any: ...


Observer = Callable[[ProviderLimits], "Awaitable[None] | None"]
"""Told each observation; may be a coroutine function."""


def rate_limit_hook(on_observation: Observer) -> Callable[[Any], Awaitable[None]]:
    """An httpx ``response`` event hook that parses each answer's rate-limit headers and hands the
    :class:`ProviderLimits` to ``on_observation`` (answers that report none are skipped).

    ``on_observation`` may return an awaitable, which the hook awaits. An error it raises is logged
    (``autogen_capacity.rate_limit_observer_failed``) and does not fail the HTTP call.

    Examples:
        >>> seen = []
        >>> client_kwargs = {"event_hooks": {"response": [rate_limit_hook(seen.append)]}}

    .. versionadded:: 0.2.0
    """

    async def hook(response: _Response) -> None:
        limits = parse_rate_limit_headers(response.headers, status=response.status_code)
        if limits is None:
            return
        try:
            result = on_observation(limits)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            logger.warning("autogen_capacity.rate_limit_observer_failed", error=repr(exc))

    return hook


def cooldown_observer(ledger: CapacityLedger, key: str) -> Callable[[ProviderLimits], Awaitable[None]]:
    """An observer that takes ``key`` out of admission while the provider says it has no room: a spent window
    (``x-ratelimit-remaining-*: 0``, on a successful answer too) or a Retry-After cools the key down until the
    provider's reset, so nobody sharing the ledger sends the request that would be answered 429.

    Examples:
        >>> http_client = async_client(cooldown_observer(ledger, "gpt-4o"))  # doctest: +SKIP

    .. versionadded:: 0.2.0
    """

    async def observe(limits: ProviderLimits) -> None:
        wait = limits.wait_s
        if wait is not None and wait > 0:
            await ledger.cooldown(key, wait)

    return observe


def async_client(on_observation: Observer, **kwargs: Any) -> Any:
    """An ``AsyncClient`` of the httpx flavour the installed ``openai`` SDK takes (``httpx2``, else
    ``httpx``) with :func:`rate_limit_hook` installed next to any ``event_hooks`` in ``kwargs``.

    Raises:
        ModuleNotFoundError: neither ``httpx2`` nor ``httpx`` is installed.

    .. versionadded:: 0.2.0
    """
    try:
        import httpx2 as httpx_module
    except ModuleNotFoundError:
        import httpx as httpx_module  # type: ignore[no-redef, import-not-found, unused-ignore]
    hooks = dict(kwargs.pop("event_hooks", None) or {})
    hooks["response"] = [*hooks.get("response", []), rate_limit_hook(on_observation)]
    return httpx_module.AsyncClient(event_hooks=hooks, **kwargs)
