"""Issue 17: rate-limit headers (:mod:`autogen_capacity.headers`), parsed by table, then seen through a real
``httpx2`` client and the real ``openai`` SDK talking to a local HTTP server that answers fixed headers."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timezone

import httpx2
import openai
import pytest

from autogen_capacity.headers import (
    LimitWindow,
    ProviderLimits,
    async_client,
    parse_rate_limit_headers,
    rate_limit_hook,
)

NOW = datetime(2025, 1, 1, 12, 0, 0, tzinfo=timezone.utc).timestamp()

OPENAI_HEADERS = {
    "x-ratelimit-limit-requests": "60",
    "x-ratelimit-remaining-requests": "59",
    "x-ratelimit-reset-requests": "1s",
    "x-ratelimit-limit-tokens": "150000",
    "x-ratelimit-remaining-tokens": "149984",
    "x-ratelimit-reset-tokens": "6m0s",
}
ANTHROPIC_HEADERS = {
    "anthropic-ratelimit-requests-limit": "50",
    "anthropic-ratelimit-requests-remaining": "0",
    "anthropic-ratelimit-requests-reset": "2025-01-01T12:00:30Z",
    "anthropic-ratelimit-tokens-limit": "40000",
    "anthropic-ratelimit-tokens-remaining": "12000",
    "anthropic-ratelimit-tokens-reset": "2025-01-01T12:00:02.5+00:00",
    "retry-after": "30",
}


class TestParse:
    def test_openai(self) -> None:
        """OpenAI's limits, remainders and Go-duration resets."""
        assert parse_rate_limit_headers(OPENAI_HEADERS, status=200, now=NOW) == ProviderLimits(
            requests=LimitWindow(60, 59, 1.0), tokens=LimitWindow(150000, 149984, 360.0), status=200
        )

    def test_anthropic(self) -> None:
        """Anthropic's limits with RFC 3339 resets (``Z`` or an offset, any fraction) and Retry-After."""
        limits = parse_rate_limit_headers(ANTHROPIC_HEADERS, status=429, now=NOW)
        assert limits == ProviderLimits(
            requests=LimitWindow(50, 0, 30.0), tokens=LimitWindow(40000, 12000, 2.5), retry_after=30.0, status=429
        )
        assert limits.is_throttled
        assert limits.wait_s == 30.0

    @pytest.mark.parametrize(
        ("headers", "retry_after"),
        [
            ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
            ({"Retry-After": "2"}, 2.0),
            ({"retry-after": "Wed, 01 Jan 2025 12:00:05 GMT"}, 5.0),
            ({"retry-after-ms": "soon", "retry-after": "3"}, 3.0),
            ({"retry-after-ms": "inf", "retry-after": "4"}, 4.0),
        ],
    )
    def test_retry_after(self, headers: dict[str, str], retry_after: float) -> None:
        """``retry-after-ms`` wins over ``retry-after`` (seconds or an HTTP date); a malformed one is skipped."""
        limits = parse_rate_limit_headers(headers, now=NOW)
        assert limits is not None
        assert limits.retry_after == retry_after

    @pytest.mark.parametrize(
        ("reset", "seconds"),
        [("20ms", 0.02), ("1h2m3.5s", 3723.5), ("0.5", 0.5), ("2025-01-01T11:59:00Z", 0.0), ("later", None)],
    )
    def test_reset_forms(self, reset: str, seconds: float | None) -> None:
        """A reset is a duration, plain seconds or a time (one in the past is 0); anything else is unknown."""
        limits = parse_rate_limit_headers({"x-ratelimit-reset-requests": reset, "x-ratelimit-limit-requests": "1"})
        assert limits is not None
        assert limits.requests.reset_in == (pytest.approx(seconds) if seconds is not None else None)

    @pytest.mark.parametrize(
        "headers", [{}, {"content-type": "application/json"}, {"x-ratelimit-limit-requests": "many"}, None]
    )
    def test_nothing_reported(self, headers: dict[str, str] | None) -> None:
        """Headers without a readable rate limit give ``None``."""
        assert parse_rate_limit_headers(headers) is None

    def test_wait_from_a_spent_window(self) -> None:
        """Without Retry-After, the wait is the reset of the spent window (the later of two spent ones)."""
        limits = parse_rate_limit_headers(
            {
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": "2s",
                "x-ratelimit-remaining-tokens": "10",
                "x-ratelimit-reset-tokens": "9s",
            }
        )
        assert limits is not None
        assert limits.wait_s == 2.0
        assert parse_rate_limit_headers(OPENAI_HEADERS, now=NOW).wait_s is None  # type: ignore[union-attr]


CHAT_COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1735732800,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
}


async def _serve(status: int, headers: dict[str, str], body: bytes) -> Callable[[], Awaitable[None]]:
    """Nothing but a fixed answer: one per connection, read until the end of the request's body."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        await reader.readexactly(length)
        lines = [f"HTTP/1.1 {status} X", f"content-length: {len(body)}", "content-type: application/json"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines.append("connection: close")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await writer.drain()
        writer.close()

    return answer  # type: ignore[return-value]


@pytest.fixture(name="server")
async def _server() -> AsyncIterator[Callable[[int, dict[str, str], bytes], Awaitable[str]]]:
    servers: list[asyncio.Server] = []

    async def start(status: int, headers: dict[str, str], body: bytes) -> str:
        answer = await _serve(status, headers, body)
        server = await asyncio.start_server(answer, "127.0.0.1", 0)  # type: ignore[arg-type]
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


Serve = Callable[[int, dict[str, str], bytes], Awaitable[str]]


class TestHook:
    async def test_success_through_httpx2(self, server: Serve) -> None:
        """A successful answer's headers reach the observer through a real ``httpx2.AsyncClient``."""
        url = await server(200, OPENAI_HEADERS, b"{}")
        seen: list[ProviderLimits] = []
        async with httpx2.AsyncClient(event_hooks={"response": [rate_limit_hook(seen.append)]}) as client:
            response = await client.get(url)
        assert response.status_code == 200
        assert [(s.status, s.requests.remaining, s.tokens.reset_in) for s in seen] == [(200, 59, 360.0)]

    async def test_throttle_and_an_async_observer(self, server: Serve) -> None:
        """A 429's headers reach a coroutine observer; the hook does not raise for the status."""
        url = await server(429, {"retry-after-ms": "1500", **OPENAI_HEADERS}, b"{}")
        seen: list[ProviderLimits] = []

        async def observe(limits: ProviderLimits) -> None:
            seen.append(limits)

        async with async_client(observe) as client:
            response = await client.post(url, json={"x": 1})
        assert response.status_code == 429
        assert [(s.is_throttled, s.retry_after) for s in seen] == [(True, 1.5)]

    async def test_no_headers_no_observation(self, server: Serve) -> None:
        """An answer without rate-limit headers is not observed."""
        url = await server(200, {}, b"{}")
        seen: list[ProviderLimits] = []
        async with async_client(seen.append) as client:
            await client.get(url)
        assert seen == []

    async def test_a_failing_observer_does_not_fail_the_call(
        self, server: Serve, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An error in the observer is logged, and the HTTP call goes on."""
        url = await server(200, OPENAI_HEADERS, b"{}")

        def broken(limits: ProviderLimits) -> None:
            raise RuntimeError("boom")

        with caplog.at_level(logging.WARNING, logger="autogen_capacity"):
            async with async_client(broken) as client:
                response = await client.get(url)
        assert response.status_code == 200
        assert [r.getMessage() for r in caplog.records] == [
            "autogen_capacity.rate_limit_observer_failed error=\"RuntimeError('boom')\""
        ]

    async def test_keeps_other_hooks(self, server: Serve) -> None:
        """:func:`async_client` adds its hook after the caller's own."""
        url = await server(200, OPENAI_HEADERS, b"{}")
        order: list[str] = []

        async def mine(response: httpx2.Response) -> None:
            order.append("mine")

        async with async_client(lambda _: order.append("limits"), event_hooks={"response": [mine]}) as client:
            await client.get(url)
        assert order == ["mine", "limits"]

    async def test_through_the_openai_sdk(self, server: Serve) -> None:
        """One chat completion with the real ``openai`` SDK: the success's headers reach the observer."""
        url = await server(200, OPENAI_HEADERS, json.dumps(CHAT_COMPLETION).encode())
        seen: list[ProviderLimits] = []
        async with async_client(seen.append) as http_client:
            client = openai.AsyncOpenAI(api_key="sk-test", base_url=url, http_client=http_client, max_retries=0)
            completion = await client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}]
            )
        assert completion.choices[0].message.content == "hi"
        assert [(s.requests.limit, s.requests.remaining, s.tokens.limit) for s in seen] == [(60, 59, 150000)]

    async def test_openai_sdk_429(self, server: Serve) -> None:
        """A 429 through the SDK: the observer sees its headers before the SDK raises."""
        body = json.dumps({"error": {"message": "slow down", "type": "requests", "code": "rate_limit_exceeded"}})
        url = await server(429, {"retry-after": "2", **OPENAI_HEADERS}, body.encode())
        seen: list[ProviderLimits] = []
        async with async_client(seen.append) as http_client:
            client = openai.AsyncOpenAI(api_key="sk-test", base_url=url, http_client=http_client, max_retries=0)
            with pytest.raises(openai.RateLimitError):
                await client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}]
                )
        assert [(s.status, s.retry_after) for s in seen] == [(429, 2.0)]
