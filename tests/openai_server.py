"""A small OpenAI-compatible chat completions server on 127.0.0.1 that enforces *true* limits per model.

Plain ``asyncio.start_server`` speaking just enough HTTP/1.1 (keep-alive, ``Content-Length`` bodies) for the
``openai`` SDK: ``POST /v1/chat/completions`` answers a chat completion with a ``usage`` block. Per model it
enforces a concurrency limit, requests and tokens per (fixed) window, and answers 429 the way OpenAI does:
``retry-after-ms`` (and ``retry-after``), or only ``x-ratelimit-remaining-requests: 0`` /
``x-ratelimit-reset-requests: "213ms"``, or a spent quota (``insufficient_quota``).

Every request is recorded (:class:`Served`): when it arrived on the server's loop clock (the test's loop: the
server runs in it), its model, its status, whether it arrived inside a retry-after window the server had
announced earlier for that model, and the tokens it was served; :attr:`OpenAIServer.windows` keeps the tokens
and requests served per window.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from autogen_core.models import ModelInfo

Hint = Literal["retry-after-ms", "retry-after", "reset"]

MODEL = "gpt-4o-mini"
SNAPSHOT = "gpt-4o-mini-2024-07-18"
"""What OpenAI names in its answers for MODEL (autogen-ext warns on anything else): serve it as ``served_as``."""
MODEL_INFO: ModelInfo = {
    "vision": False,
    "function_calling": False,
    "json_output": False,
    "family": "unknown",
    "structured_output": False,
}
"""The ``model_info`` an ``OpenAIChatCompletionClient`` for a model of this server is built with."""


@dataclass
class ModelLimits:
    """The true limits of one model and how its 429s look."""

    max_concurrent: int | None = None
    """Requests in service at once; past it, 429 announcing ``busy_retry_after_s``."""
    requests: int | None = None
    """Requests per window; past it, 429 announcing the window's end."""
    tokens: int | None = None
    """Tokens served per window: a request is refused once the window has served this many (as OpenAI, a
    request that starts under the limit is served in full)."""
    window_s: float = 60.0
    """The requests/tokens window: fixed, opened by the first request after the previous one closed."""
    hint: Hint = "retry-after-ms"
    """``retry-after-ms``: ``retry-after-ms`` and ``retry-after`` (seconds); ``retry-after``: only it;
    ``reset``: no Retry-After, only ``x-ratelimit-remaining-requests: 0`` and ``x-ratelimit-reset-requests``."""
    busy_retry_after_s: float = 0.2
    """What a 429 for concurrency announces."""
    out_of_quota: bool = False
    """Every request answers 429 ``insufficient_quota`` (after the service time)."""
    service_s: tuple[float, float] = (0.01, 0.03)
    """A served request (or a spent quota's answer) takes a uniform time in this range."""
    prompt_tokens: int = 30
    completion_tokens: int = 20
    served_as: str | None = None
    """The ``model`` a completion names (OpenAI answers with the dated snapshot: ``gpt-4o-mini-2024-07-18``);
    ``None``: the requested name."""

    @property
    def tokens_per_request(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Served:
    """One request as the server saw it."""

    arrived: float
    model: str
    status: int
    in_announced_window: bool
    """Arrived while a retry-after window the server had announced earlier for this model was open."""
    tokens: int = 0
    window: int = 0
    """The index of the requests/tokens window it was counted in (0: none was open)."""
    announced_until: float | None = None
    """For a 429 with a hint: when the window it announced ends (``arrived`` + the hint)."""
    quota: bool = False
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _ModelState:
    in_service: int = 0
    window: int = 0
    window_end: float = -math.inf
    window_requests: int = 0
    window_tokens: int = 0
    announced: list[tuple[float, float]] = field(default_factory=list)


class OpenAIServer:
    """``async with OpenAIServer({"gpt-4o-mini": ModelLimits(...)}) as server:`` serves ``server.base_url``."""

    def __init__(self, models: dict[str, ModelLimits], *, seed: int = 0) -> None:
        self.models = models
        self.log: list[Served] = []
        self.windows: dict[tuple[str, int], dict[str, int]] = {}
        """``(model, window index)`` -> ``{"requests": ..., "tokens": ...}`` served in that window."""
        self._state = {model: _ModelState() for model in models}
        self._rng = random.Random(seed)
        self._ids = itertools.count(1)
        self._changed = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def __aenter__(self) -> OpenAIServer:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):  # ends each connection's read: its handler returns
            writer.close()
        await asyncio.wait_for(asyncio.gather(*self._connections, return_exceptions=True), 5.0)
        await self._server.wait_closed()

    # ----------------------------------------------------------------- what the tests read

    def requests(self, model: str | None = None) -> list[Served]:
        return [r for r in self.log if model is None or r.model == model]

    def tokens_served(self, model: str) -> int:
        return sum(r.tokens for r in self.log if r.model == model)

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Until ``predicate()`` holds: re-checked on every recorded request, bounded by ``timeout``."""

        async def _wait() -> None:
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(_wait(), timeout)

    # ----------------------------------------------------------------- HTTP

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self._writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {
                    name.strip().lower(): value.strip()
                    for name, _, value in (line.partition(":") for line in lines[1:] if line)
                }
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                status, extra, payload = await self._handle(method, path, body)
                data = json.dumps(payload).encode()
                reason = {200: "OK", 404: "Not Found", 429: "Too Many Requests"}.get(status, "Error")
                out = [f"HTTP/1.1 {status} {reason}", "content-type: application/json", f"content-length: {len(data)}"]
                out += [f"{name}: {value}" for name, value in extra.items()]
                writer.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + data)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._connections.discard(task)
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _handle(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
        if method != "POST" or path.rstrip("/") != "/v1/chat/completions":
            return 404, {}, {"error": {"message": f"no route {method} {path}", "type": "invalid_request_error"}}
        model = str(json.loads(body or b"{}").get("model"))
        limits = self.models.get(model)
        if limits is None:
            return 404, {}, _error(f"The model `{model}` does not exist", "model_not_found", "invalid_request_error")
        loop = asyncio.get_running_loop()
        state = self._state[model]
        now = loop.time()
        inside = any(sent < now < until for sent, until in state.announced)
        if limits.out_of_quota:
            self._record(Served(now, model, 429, inside, quota=True))
            await asyncio.sleep(self._rng.uniform(*limits.service_s))
            message = "You exceeded your current quota, please check your plan and billing details."
            return 429, {}, _error(message, "insufficient_quota", "insufficient_quota")
        if now >= state.window_end:  # the previous window closed: the next one opens with this request
            state.window += 1
            state.window_end = now + limits.window_s
            state.window_requests = state.window_tokens = 0
        refused: tuple[str, float] | None = None
        if limits.max_concurrent is not None and state.in_service >= limits.max_concurrent:
            refused = ("concurrency", limits.busy_retry_after_s)
        elif limits.requests is not None and state.window_requests >= limits.requests:
            refused = ("requests", state.window_end - now)
        elif limits.tokens is not None and state.window_tokens >= limits.tokens:
            refused = ("tokens", state.window_end - now)
        if refused is not None:
            what, wait = refused
            headers, wait = self._hint(limits, state, what, wait)
            state.announced.append((now, now + wait))
            self._record(
                Served(now, model, 429, inside, window=state.window, announced_until=now + wait, headers=headers)
            )
            message = f"Rate limit reached for {model} ({what}). Please try again in {wait * 1000:.0f}ms."
            return 429, headers, _error(message, f"rate_limit_exceeded_{what}", "requests")
        state.in_service += 1
        state.window_requests += 1
        state.window_tokens += limits.tokens_per_request
        counted = self.windows.setdefault((model, state.window), {"requests": 0, "tokens": 0})
        counted["requests"] += 1
        counted["tokens"] += limits.tokens_per_request
        self._record(Served(now, model, 200, inside, tokens=limits.tokens_per_request, window=state.window))
        try:
            await asyncio.sleep(self._rng.uniform(*limits.service_s))
        finally:
            state.in_service -= 1
        return 200, self._remaining(limits, state, loop.time()), self._completion(model, limits)

    def _hint(self, limits: ModelLimits, state: _ModelState, what: str, wait: float) -> tuple[dict[str, str], float]:
        """The 429's headers, and the wait they announce (rounded up as sent)."""
        ms = max(math.ceil(wait * 1000), 1)
        if limits.hint == "reset":
            # No Retry-After: only the spent limit's remaining 0 and its reset, in OpenAI's duration form.
            limit = "tokens" if what == "tokens" else "requests"
            headers = {f"x-ratelimit-remaining-{limit}": "0", f"x-ratelimit-reset-{limit}": f"{ms}ms"}
            return headers, ms / 1000
        if limits.hint == "retry-after":
            return {"retry-after": f"{ms / 1000:.3f}"}, ms / 1000
        return {"retry-after-ms": str(ms), "retry-after": str(math.ceil(ms / 1000))}, ms / 1000

    @staticmethod
    def _remaining(limits: ModelLimits, state: _ModelState, now: float) -> dict[str, str]:
        headers: dict[str, str] = {}
        reset = f"{max(math.ceil((state.window_end - now) * 1000), 0)}ms"
        if limits.requests is not None:
            headers["x-ratelimit-limit-requests"] = str(limits.requests)
            headers["x-ratelimit-remaining-requests"] = str(max(limits.requests - state.window_requests, 0))
            headers["x-ratelimit-reset-requests"] = reset
        if limits.tokens is not None:
            headers["x-ratelimit-limit-tokens"] = str(limits.tokens)
            headers["x-ratelimit-remaining-tokens"] = str(max(limits.tokens - state.window_tokens, 0))
            headers["x-ratelimit-reset-tokens"] = reset
        return headers

    def _completion(self, model: str, limits: ModelLimits) -> dict[str, Any]:
        number = next(self._ids)
        return {
            "id": f"chatcmpl-{number}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": limits.served_as or model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": f"Answer {number}.", "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": limits.prompt_tokens,
                "completion_tokens": limits.completion_tokens,
                "total_tokens": limits.tokens_per_request,
            },
        }

    def _record(self, served: Served) -> None:
        self.log.append(served)
        self._changed.set()


def _error(message: str, code: str, type_: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}
