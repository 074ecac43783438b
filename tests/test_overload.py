"""classify_overload over the exceptions real SDKs raise: throttled (with its hint), exhausted, or ordinary."""

from __future__ import annotations

import datetime as dt
from email.utils import format_datetime
from typing import Any

import pytest

from autogen_capacity import Overloaded, OverloadSignal, classify_overload


class Response:
    """The parts of an httpx/requests response that SDK errors carry."""

    def __init__(self, status_code: int | None = None, headers: dict[str, str] | None = None) -> None:
        self.status_code = status_code
        self.headers = headers or {}


class SDKError(Exception):
    """An SDK-shaped error: any of ``status_code``, ``status``, ``response``, ``headers``, ``body``, ``code``."""

    def __init__(self, message: str = "error", **attributes: Any) -> None:
        super().__init__(message)
        for name, value in attributes.items():
            setattr(self, name, value)


def chained(outer: BaseException, inner: BaseException, *, explicit: bool = True) -> BaseException:
    """``outer`` raised from ``inner`` (``raise outer from inner``, or implicitly while handling it)."""
    try:
        try:
            raise inner
        except BaseException:
            if explicit:
                raise outer from inner
            raise outer  # noqa: B904  (the implicit __context__ is the point)
    except BaseException as caught:
        return caught


def suppressed(outer: BaseException, inner: BaseException) -> BaseException:
    """``raise outer from None`` while handling ``inner``."""
    try:
        try:
            raise inner
        except BaseException:
            raise outer from None
    except BaseException as caught:
        return caught


THROTTLED_429 = SDKError(status_code=429, response=Response(429, {"Retry-After": "7"}))


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        pytest.param(THROTTLED_429, OverloadSignal("throttled", 7.0), id="status_code+Retry-After"),
        pytest.param(
            SDKError(status_code=429, response=Response(429, {"retry-after": "1.5"})),
            OverloadSignal("throttled", 1.5),
            id="lowercase-retry-after-fractional",
        ),
        pytest.param(
            SDKError(status_code=429, response=Response(429, {"retry-after-ms": "250", "Retry-After": "9"})),
            OverloadSignal("throttled", 0.25),
            id="retry-after-ms-wins",
        ),
        pytest.param(
            SDKError(status_code=429, response=Response(429, {"retry-after-ms": "junk", "Retry-After": "9"})),
            OverloadSignal("throttled", 9.0),
            id="bad-retry-after-ms-falls-back",
        ),
        pytest.param(
            SDKError(status_code=429, response=Response(429, {"Retry-After": "-3"})),
            OverloadSignal("throttled", 0.0),
            id="negative-clamped",
        ),
        pytest.param(
            SDKError(status_code=429, response=Response(429, {"Retry-After": "inf"})),
            OverloadSignal("throttled", None),
            id="infinite-ignored",
        ),
        pytest.param(
            SDKError(status_code=429, response=Response(429, {"Retry-After": "soon"})),
            OverloadSignal("throttled", None),
            id="garbage-ignored",
        ),
        pytest.param(SDKError(status_code=429), OverloadSignal("throttled", None), id="no-response"),
        pytest.param(
            SDKError(status=429, headers={"Retry-After": "4"}),
            OverloadSignal("throttled", 4.0),
            id="status+own-headers",
        ),
        pytest.param(SDKError(status_code=503), OverloadSignal("throttled", None), id="503"),
        pytest.param(
            SDKError(response=Response(429, {"Retry-After": "3"})), OverloadSignal("throttled", 3.0), id="response-only"
        ),
        pytest.param(SDKError(status_code=402), OverloadSignal("exhausted"), id="402"),
        pytest.param(
            SDKError(status_code=429, body={"error": {"code": "insufficient_quota"}}),
            OverloadSignal("exhausted"),
            id="quota-in-body",
        ),
        pytest.param(
            SDKError(status_code=429, code="insufficient_quota"), OverloadSignal("exhausted"), id="quota-code"
        ),
        pytest.param(Overloaded(), OverloadSignal("throttled", None), id="Overloaded"),
        pytest.param(Overloaded(retry_after=2.0), OverloadSignal("throttled", 2.0), id="Overloaded-hint"),
        pytest.param(Overloaded(kind="exhausted"), OverloadSignal("exhausted", None), id="Overloaded-exhausted"),
        pytest.param(
            chained(RuntimeError("wrapped"), THROTTLED_429), OverloadSignal("throttled", 7.0), id="raise-from"
        ),
        pytest.param(
            chained(RuntimeError("while handling"), THROTTLED_429, explicit=False),
            OverloadSignal("throttled", 7.0),
            id="implicit-context",
        ),
        pytest.param(suppressed(ValueError("bad input"), THROTTLED_429), None, id="from-None-ends-chain"),
        pytest.param(ValueError("boom"), None, id="ValueError"),
        pytest.param(SDKError(status_code=500), None, id="500"),
        pytest.param(SDKError(status_code=400, response=Response(400)), None, id="400"),
        pytest.param(SDKError(status_code=True), None, id="bool-is-not-a-status"),
        pytest.param(SDKError(status_code="429"), None, id="string-is-not-a-status"),
    ],
)
def test_classify_overload(exc: BaseException, expected: OverloadSignal | None) -> None:
    """Each SDK shape is classified as throttled (with its hint), exhausted, or an ordinary error."""
    assert classify_overload(exc) == expected


def test_http_date_retry_after() -> None:
    """Retry-After given as an HTTP date becomes the seconds until then."""
    when = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=120)
    exc = SDKError(status_code=429, response=Response(429, {"Retry-After": format_datetime(when, usegmt=True)}))
    overload = classify_overload(exc)
    assert overload is not None
    assert overload.kind == "throttled"
    assert overload.retry_after_s is not None
    assert 100 < overload.retry_after_s <= 120


def test_http_date_in_the_past_is_zero() -> None:
    """An HTTP date already past means "retry now"."""
    past = format_datetime(dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc), usegmt=True)
    exc = SDKError(status_code=503, response=Response(503, {"Retry-After": past}))
    assert classify_overload(exc) == OverloadSignal("throttled", 0.0)


def test_a_cyclic_chain_terminates() -> None:
    """A chain that loops back on itself is walked a bounded number of steps."""
    a, b = ValueError("a"), ValueError("b")
    a.__cause__, b.__cause__ = b, a
    assert classify_overload(a) is None


class TestOpenAI:
    """openai's real exception classes, built offline."""

    @pytest.fixture(name="openai")
    def _openai(self) -> Any:
        return pytest.importorskip("openai")

    @pytest.fixture(name="httpx")
    def _httpx(self, openai: Any) -> Any:
        # openai's HTTP client: httpx, or its httpx2 fork in newer releases.
        import importlib

        for module in ("httpx2", "httpx"):
            try:
                return importlib.import_module(module)
            except ImportError:
                continue
        pytest.skip("openai's HTTP client is not installed")

    def response(self, httpx: Any, status: int, headers: dict[str, str] | None = None) -> Any:
        return httpx.Response(status, headers=headers or {}, request=httpx.Request("POST", "https://x"))

    def test_rate_limit_error_with_retry_after(self, openai: Any, httpx: Any) -> None:
        """openai.RateLimitError with Retry-After is throttled with that hint."""
        exc = openai.RateLimitError("slow down", response=self.response(httpx, 429, {"Retry-After": "7"}), body=None)
        assert classify_overload(exc) == OverloadSignal("throttled", 7.0)

    def test_rate_limit_error_with_retry_after_ms(self, openai: Any, httpx: Any) -> None:
        """openai's own retry-after-ms header wins over Retry-After."""
        headers = {"retry-after-ms": "1500", "retry-after": "9"}
        exc = openai.RateLimitError("slow down", response=self.response(httpx, 429, headers), body=None)
        assert classify_overload(exc) == OverloadSignal("throttled", 1.5)

    def test_insufficient_quota_is_exhausted(self, openai: Any, httpx: Any) -> None:
        """A 429 whose body says insufficient_quota is a spent entitlement, never retried."""
        body = {
            "message": "You exceeded your current quota",
            "type": "insufficient_quota",
            "code": "insufficient_quota",
        }
        exc = openai.RateLimitError("quota", response=self.response(httpx, 429), body=body)
        assert classify_overload(exc) == OverloadSignal("exhausted")

    def test_service_unavailable_is_throttled(self, openai: Any, httpx: Any) -> None:
        """A 503 APIStatusError is throttled."""
        exc = openai.APIStatusError("unavailable", response=self.response(httpx, 503), body=None)
        assert classify_overload(exc) == OverloadSignal("throttled", None)

    def test_server_error_and_timeout_are_ordinary(self, openai: Any, httpx: Any) -> None:
        """A 500 and a timeout are not overload signals."""
        request = httpx.Request("POST", "https://x")
        assert classify_overload(openai.InternalServerError("x", response=self.response(httpx, 500), body=None)) is None
        assert classify_overload(openai.APITimeoutError(request=request)) is None

    def test_wrapped_rate_limit_error(self, openai: Any, httpx: Any) -> None:
        """An error raised from an openai.RateLimitError is classified by its cause."""
        cause = openai.RateLimitError("slow down", response=self.response(httpx, 429, {"Retry-After": "2"}), body=None)
        assert classify_overload(chained(RuntimeError("model call failed"), cause)) == OverloadSignal("throttled", 2.0)


def _reset_429(headers: dict[str, str]) -> SDKError:
    return SDKError(status_code=429, response=Response(429, headers))


class TestRateLimitReset:
    """OpenAI's x-ratelimit-reset-* on a 429 without Retry-After: the wait until the spent limit resets."""

    @pytest.mark.parametrize(
        ("value", "seconds"),
        [("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("0.5s", 0.5), ("2", 2.0)],
    )
    def test_durations(self, value: str, seconds: float) -> None:
        """Go-style durations and plain seconds are read."""
        overload = classify_overload(_reset_429({"x-ratelimit-reset-requests": value}))
        assert overload is not None
        assert overload.retry_after_s == pytest.approx(seconds)

    @pytest.mark.parametrize("value", ["soon", "1x", "s", "", "1s garbage"])
    def test_malformed_is_no_hint(self, value: str) -> None:
        """A malformed reset gives no hint (the caller's schedule applies)."""
        assert classify_overload(_reset_429({"x-ratelimit-reset-requests": value})) == OverloadSignal("throttled", None)

    def test_the_spent_limit_decides(self) -> None:
        """With remaining tokens at 0 and requests left, the tokens' reset is the wait."""
        headers = {
            "x-ratelimit-remaining-requests": "12",
            "x-ratelimit-reset-requests": "50ms",
            "x-ratelimit-remaining-tokens": "0",
            "x-ratelimit-reset-tokens": "6m0s",
        }
        assert classify_overload(_reset_429(headers)) == OverloadSignal("throttled", 360.0)

    def test_without_remaining_the_later_reset(self) -> None:
        """Without x-ratelimit-remaining-*, the later of the two resets is waited for."""
        headers = {"x-ratelimit-reset-requests": "2s", "x-ratelimit-reset-tokens": "500ms"}
        assert classify_overload(_reset_429(headers)) == OverloadSignal("throttled", 2.0)

    def test_retry_after_wins(self) -> None:
        """Retry-After, when present, is the provider's word; the resets are not read."""
        headers = {"retry-after": "3", "x-ratelimit-reset-requests": "6m0s"}
        assert classify_overload(_reset_429(headers)) == OverloadSignal("throttled", 3.0)
