"""Issue 17: CapacityAwareChatCompletionClient, a contract on a model client.

Offline parts use ``ReplayChatCompletionClient``; the SDK parts drive the real ``openai`` SDK through autogen-ext's
``OpenAIChatCompletionClient`` against the OpenAI-compatible server of ``tests/openai_server.py`` on 127.0.0.1,
and count what the server saw (no assertion is about time)."""

from __future__ import annotations

import asyncio
import dataclasses
import warnings
from collections.abc import AsyncIterator
from typing import Any

import pytest
from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.conditions import MaxMessageTermination
from autogen_core import ComponentLoader
from autogen_core.models import ChatCompletionClient, UserMessage
from autogen_ext.models.openai import OpenAIChatCompletionClient
from autogen_ext.models.replay import ReplayChatCompletionClient

from autogen_capacity import (
    AgentCapacity,
    CapacityAwareChatCompletionClient,
    CapacityAwareGroupChat,
    CapacityConfigWarning,
    CapacityExhausted,
    InMemoryLedger,
)
from autogen_capacity.headers import async_client, cooldown_observer
from autogen_capacity.ledger import KeyStatus, Lease
from faults import QUICK, FlakyReplayClient, RateLimitError
from openai_server import MODEL, MODEL_INFO, SNAPSHOT, ModelLimits, OpenAIServer

TIMEOUT = 30.0
HELLO = [UserMessage(content="hello", source="user")]


class CountingLedger(InMemoryLedger):
    """Counts the leases granted per key."""

    def __init__(self) -> None:
        super().__init__()
        self.granted: dict[str, int] = {}

    async def acquire_or_status(
        self, key: str, capacity: AgentCapacity, *, idle_only: bool = False
    ) -> Lease | KeyStatus:
        lease = await super().acquire_or_status(key, capacity, idle_only=idle_only)
        if isinstance(lease, Lease):
            self.granted[key] = self.granted.get(key, 0) + 1
        return lease


@pytest.fixture(name="counting")
async def _counting() -> AsyncIterator[CountingLedger]:
    ledger = CountingLedger()
    yield ledger
    await ledger.aclose()


@pytest.fixture(name="server")
async def _server(request: pytest.FixtureRequest) -> AsyncIterator[OpenAIServer]:
    limits = dataclasses.replace(request.param, served_as=SNAPSHOT)  # as OpenAI names it in its answers
    async with OpenAIServer({MODEL: limits}) as server:
        yield server


def sdk_client(server: OpenAIServer, **kwargs: Any) -> OpenAIChatCompletionClient:
    return OpenAIChatCompletionClient(
        model=MODEL, base_url=server.base_url, api_key="test", model_info=MODEL_INFO, **{"max_retries": 0, **kwargs}
    )


def contract(**limits: Any) -> AgentCapacity:
    return AgentCapacity.model_validate({**QUICK, "max_caller_retries": 20, "key": MODEL, **limits})


class TestStandalone:
    @pytest.mark.parametrize("server", [ModelLimits(max_concurrent=1, service_s=(0.01, 0.02))], indirect=True)
    async def test_agents_sharing_a_deployment_never_exceed_it(
        self, server: OpenAIServer, counting: CountingLedger
    ) -> None:
        """Six AssistantAgents on one deployment that serves one request at a time, each with its own wrapped
        client on the same key: the server never has to refuse one, and every run is answered."""
        clients = [
            CapacityAwareChatCompletionClient(
                sdk_client(server),
                contract(max_concurrent=1, backoff_initial_ms=20, backoff_ceiling_ms=50, max_caller_retries=100),
                ledger=counting,
            )
            for _ in range(6)
        ]
        agents = [AssistantAgent(f"a{i}", model_client=c) for i, c in enumerate(clients)]
        results = await asyncio.wait_for(asyncio.gather(*(a.run(task="hi") for a in agents)), TIMEOUT)

        assert all(r.messages[-1].source == a.name for r, a in zip(results, agents, strict=True))
        assert [r.status for r in server.requests()] == [200] * 6
        assert counting.granted == {MODEL: 6}
        for c in clients:
            await c.close()

    @pytest.mark.parametrize(
        "server", [ModelLimits(requests=2, window_s=0.3, hint="retry-after-ms", service_s=(0.0, 0.001))], indirect=True
    )
    async def test_a_429_is_waited_out_by_its_retry_after(self, server: OpenAIServer, counting: CountingLedger) -> None:
        """Past the provider's limit, the 429's Retry-After cools the key down: the call is retried after it,
        and no request lands in the window the server announced."""
        client = CapacityAwareChatCompletionClient(sdk_client(server), contract(), ledger=counting)
        for _ in range(4):
            result = await asyncio.wait_for(client.create(HELLO), TIMEOUT)
            assert isinstance(result.content, str)

        statuses = [r.status for r in server.requests()]
        assert statuses.count(429) == 1
        assert statuses.count(200) == 4
        assert not any(r.in_announced_window for r in server.requests())
        await client.close()

    @pytest.mark.parametrize("server", [ModelLimits(requests=2, window_s=0.3, service_s=(0.0, 0.001))], indirect=True)
    async def test_a_successes_headers_spare_the_429(self, server: OpenAIServer, counting: CountingLedger) -> None:
        """With the header hook on the SDK's HTTP client, the answer that spends the window says so
        (``x-ratelimit-remaining-requests: 0``): the next call waits for the reset instead of being refused."""
        http_client = async_client(cooldown_observer(counting, MODEL))
        client = CapacityAwareChatCompletionClient(
            sdk_client(server, http_client=http_client), contract(), ledger=counting
        )
        for _ in range(5):
            await asyncio.wait_for(client.create(HELLO), TIMEOUT)

        assert [r.status for r in server.requests()] == [200] * 5
        assert {r.window for r in server.requests()} == {1, 2, 3}
        await client.close()

    async def test_tokens_are_debited_before_the_release(self, counting: CountingLedger) -> None:
        """The usage a call reports is in the key's tpm window once it returns."""
        replay = ReplayChatCompletionClient(["one", "two"])
        client = CapacityAwareChatCompletionClient(replay, contract(tpm=10_000), ledger=counting)
        result = await client.create(HELLO)

        used = result.usage.prompt_tokens + result.usage.completion_tokens
        assert used > 0
        usage = (await counting.snapshot())[MODEL]
        assert (usage.tokens_last_minute, usage.in_flight, usage.acquired) == (used, 0, 1)

    async def test_overload_past_the_contract_raises_capacity_exhausted(self, counting: CountingLedger) -> None:
        """A provider that keeps answering 429 is retried max_caller_retries times, then the call raises."""
        flaky = FlakyReplayClient(["never"], [RateLimitError() for _ in range(5)])
        client = CapacityAwareChatCompletionClient(flaky, contract(max_caller_retries=2), ledger=counting)
        with pytest.raises(CapacityExhausted, match="still overloaded after 2 retries"):
            await client.create(HELLO)
        assert counting.granted == {}  # unbounded contract: nothing leased, only cooldowns recorded

    async def test_an_ordinary_error_propagates(self, counting: CountingLedger) -> None:
        flaky = FlakyReplayClient(["never"], [ValueError("bad request")])
        client = CapacityAwareChatCompletionClient(flaky, contract(max_concurrent=1), ledger=counting)
        with pytest.raises(ValueError, match="bad request"):
            await client.create(HELLO)
        assert (await counting.snapshot())[MODEL].in_flight == 0


class TestStreaming:
    async def test_the_lease_is_held_until_the_stream_ends(self, counting: CountingLedger) -> None:
        client = CapacityAwareChatCompletionClient(
            ReplayChatCompletionClient(["a long answer"]), contract(max_concurrent=1), ledger=counting
        )
        seen: list[tuple[str, int]] = []
        async for item in client.create_stream(HELLO):
            seen.append((type(item).__name__, (await counting.snapshot())[MODEL].in_flight))

        chunks, final = seen[:-1], seen[-1]
        assert chunks
        assert set(chunks) == {("str", 1)}
        assert final == ("CreateResult", 0)  # settled (tokens debited) and released with the final item

    async def test_a_stream_closed_early_releases(self, counting: CountingLedger) -> None:
        client = CapacityAwareChatCompletionClient(
            ReplayChatCompletionClient(["a long answer"]), contract(max_concurrent=1), ledger=counting
        )
        stream = client.create_stream(HELLO)
        await stream.__anext__()
        assert (await counting.snapshot())[MODEL].in_flight == 1
        await stream.aclose()

        assert (await counting.snapshot())[MODEL].in_flight == 0

    async def test_a_cancelled_stream_releases(self, counting: CountingLedger) -> None:
        client = CapacityAwareChatCompletionClient(
            ReplayChatCompletionClient(["a long answer"]), contract(max_concurrent=1), ledger=counting
        )
        entered = asyncio.Event()

        async def consume() -> None:
            async for _ in client.create_stream(HELLO):
                entered.set()
                await asyncio.Event().wait()  # a consumer stuck mid-stream

        task = asyncio.create_task(consume())
        await asyncio.wait_for(entered.wait(), TIMEOUT)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

        assert (await counting.snapshot())[MODEL].in_flight == 0


class TestInsideATeam:
    async def test_a_call_on_the_turns_key_takes_no_second_lease(self, counting: CountingLedger) -> None:
        """The team leases the member's key for its turn; the member's wrapped client on the same key runs under
        that lease. At max_concurrent=1 a second lease would wait for the first forever."""
        one = contract(max_concurrent=1)
        writer = AssistantAgent(
            "writer",
            model_client=CapacityAwareChatCompletionClient(
                ReplayChatCompletionClient(["draft"] * 4), one, ledger=counting
            ),
        )
        team = CapacityAwareGroupChat(
            [writer],
            capacities={"writer": one},
            ledger=counting,
            termination_condition=MaxMessageTermination(4),
        )
        result = await asyncio.wait_for(team.run(task="write"), TIMEOUT)

        assert [m.source for m in result.messages] == ["user", "writer", "writer", "writer"]
        assert counting.granted == {MODEL: 3}  # one a turn

    async def test_a_call_on_another_key_leases_that_key(self, counting: CountingLedger) -> None:
        writer = AssistantAgent(
            "writer",
            model_client=CapacityAwareChatCompletionClient(
                ReplayChatCompletionClient(["draft"] * 4), contract(max_concurrent=2, key="model"), ledger=counting
            ),
        )
        team = CapacityAwareGroupChat(
            [writer],
            capacities={"writer": contract(max_concurrent=1, key="writer")},
            ledger=counting,
            termination_condition=MaxMessageTermination(3),
        )
        await asyncio.wait_for(team.run(task="write"), TIMEOUT)

        assert counting.granted == {"writer": 2, "model": 2}


class TestComponent:
    def test_round_trip(self) -> None:
        client = CapacityAwareChatCompletionClient(
            ReplayChatCompletionClient(["hi"]), contract(max_concurrent=3), key="deployment", priority="critical"
        )
        config = client.dump_component()
        loaded = ComponentLoader.load_component(config, ChatCompletionClient)

        assert config.provider == "autogen_capacity.CapacityAwareChatCompletionClient"
        assert isinstance(loaded, CapacityAwareChatCompletionClient)
        assert (loaded.key, loaded.capacity, loaded.dump_component()) == ("deployment", client.capacity, config)
        assert isinstance(loaded.model_client, ReplayChatCompletionClient)

    def test_the_wrapped_clients_api_is_passed_through(self) -> None:
        replay = ReplayChatCompletionClient(["hi"])
        client = CapacityAwareChatCompletionClient(replay, contract())
        assert client.model_info == replay.model_info
        assert client.count_tokens(HELLO) == replay.count_tokens(HELLO)
        assert client.remaining_tokens(HELLO) == replay.remaining_tokens(HELLO)
        assert client.total_usage() == replay.total_usage()
        assert client.actual_usage() == replay.actual_usage()

    def test_the_key_defaults_to_the_model(self) -> None:
        sdk = OpenAIChatCompletionClient(model="gpt-4.1", api_key="test", max_retries=0)
        assert CapacityAwareChatCompletionClient(sdk, AgentCapacity()).key == "gpt-4.1"
        assert CapacityAwareChatCompletionClient(sdk, AgentCapacity(key="pool")).key == "pool"
        assert CapacityAwareChatCompletionClient(ReplayChatCompletionClient([]), AgentCapacity()).key == (
            "ReplayChatCompletionClient"
        )

    def test_sdk_retries_are_a_warning(self) -> None:
        sdk = OpenAIChatCompletionClient(model="gpt-4.1", api_key="test", max_retries=2)
        with pytest.warns(CapacityConfigWarning, match=r"max_retries=2"):
            CapacityAwareChatCompletionClient(sdk, AgentCapacity())
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            CapacityAwareChatCompletionClient(
                OpenAIChatCompletionClient(model="gpt-4.1", api_key="test", max_retries=0), AgentCapacity()
            )

    def test_a_wrong_client_is_named(self) -> None:
        with pytest.raises(TypeError, match="model_client must be a ChatCompletionClient, got str"):
            CapacityAwareChatCompletionClient("gpt-4.1", AgentCapacity())  # type: ignore[arg-type]
