"""Undoing an overloaded turn: checkpoint before the turn (cheap), restore after a 429 (exact)."""

from __future__ import annotations

import importlib
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from typing import Any

import pytest
from autogen_agentchat.agents import AssistantAgent, BaseChatAgent, SocietyOfMindAgent
from autogen_agentchat.base import Response
from autogen_agentchat.messages import BaseChatMessage, HandoffMessage, TextMessage
from autogen_agentchat.teams import RoundRobinGroupChat
from autogen_agentchat.tools._task_runner_tool import TaskRunnerToolArgs
from autogen_core import CancellationToken, FunctionCall
from autogen_core.memory import ListMemory, MemoryContent, MemoryMimeType
from autogen_core.model_context import (
    BufferedChatCompletionContext,
    ChatCompletionContext,
    HeadAndTailChatCompletionContext,
    TokenLimitedChatCompletionContext,
    UnboundedChatCompletionContext,
)
from autogen_core.models import (
    AssistantMessage,
    CreateResult,
    LLMMessage,
    ModelFamily,
    ModelInfo,
    RequestUsage,
    UserMessage,
)
from autogen_ext.models.replay import ReplayChatCompletionClient

from autogen_capacity import (
    AgentCapacity,
    CapacityAwareAgentTool,
    CapacityAwareGroupChat,
    InMemoryLedger,
    classify_overload,
)
from autogen_capacity._turn_undo import (
    APPEND_ONLY_CONTEXTS,
    ASSISTANT_TURN_METHODS,
    TurnCheckpoint,
    checkpoint,
)

openai = pytest.importorskip("openai")


def _httpx() -> Any:
    """openai's HTTP client: httpx, or its httpx2 fork in newer releases."""
    for module in ("httpx2", "httpx"):
        try:
            return importlib.import_module(module)
        except ImportError:
            continue
    pytest.skip("openai's HTTP client is not installed")  # pragma: no cover


def rate_limit_error() -> Any:
    """The 429 the OpenAI SDK raises, built offline."""
    httpx = _httpx()
    response = httpx.Response(429, headers={"Retry-After": "1"}, request=httpx.Request("POST", "https://x"))
    return openai.RateLimitError("Error code: 429", response=response, body=None)


MODEL_INFO = ModelInfo(
    vision=False, function_calling=True, json_output=False, family=ModelFamily.UNKNOWN, structured_output=False
)


class ThrottledReplayClient(ReplayChatCompletionClient):
    """A replay client whose calls number ``throttle`` (0-based, counting every call) raise a 429."""

    def __init__(self, responses: Sequence[str | CreateResult], throttle: set[int]) -> None:
        super().__init__(list(responses), model_info=MODEL_INFO)
        self.throttle = throttle
        self.calls = 0

    def _maybe_throttle(self) -> None:
        call, self.calls = self.calls, self.calls + 1
        if call in self.throttle:
            raise rate_limit_error()

    async def create(self, messages: Sequence[LLMMessage], **kwargs: Any) -> CreateResult:
        self._maybe_throttle()
        return await super().create(messages, **kwargs)

    async def create_stream(self, messages: Sequence[LLMMessage], **kwargs: Any) -> AsyncGenerator[str | CreateResult]:
        self._maybe_throttle()
        async for item in super().create_stream(messages, **kwargs):
            yield item


def tool_call(name: str, arguments: str = "{}") -> CreateResult:
    """A model reply that calls one tool."""
    return CreateResult(
        finish_reason="function_calls",
        content=[FunctionCall(id="call-1", name=name, arguments=arguments)],
        usage=RequestUsage(prompt_tokens=1, completion_tokens=1),
        cached=False,
    )


def lookup() -> str:
    """A tool with nothing to undo."""
    return "42"


CONTEXTS: dict[str, Callable[[], ChatCompletionContext]] = {
    "unbounded": UnboundedChatCompletionContext,
    "buffered": lambda: BufferedChatCompletionContext(buffer_size=2),
    "head_and_tail": lambda: HeadAndTailChatCompletionContext(head_size=1, tail_size=1),
    "token_limited": lambda: TokenLimitedChatCompletionContext(ReplayChatCompletionClient([]), token_limit=10_000),
}


@pytest.fixture(name="context", params=list(CONTEXTS))
def _context(request: pytest.FixtureRequest) -> ChatCompletionContext:
    """A fresh model context of each of AutoGen's four kinds."""
    return CONTEXTS[request.param]()


def say(text: str, source: str = "user") -> list[BaseChatMessage]:
    return [TextMessage(content=text, source=source)]


async def overloaded_turn(agent: AssistantAgent, messages: Sequence[BaseChatMessage]) -> TurnCheckpoint:
    """Checkpoint, then run a turn that fails with a 429; returns the checkpoint."""
    taken = await checkpoint(agent)
    with pytest.raises(openai.RateLimitError) as raised:
        await agent.on_messages(messages, CancellationToken())
    assert classify_overload(raised.value) is not None
    return taken


class TestAssistantAgent:
    """An AssistantAgent in one of AutoGen's model contexts: restored exactly, without saving its state first."""

    async def test_first_model_call_throttled(self, context: ChatCompletionContext) -> None:
        """A 429 on the turn's model call, after earlier turns, is undone: the saved state is as before."""
        client = ThrottledReplayClient(["one " * 100, "two " * 100, "three"], throttle={2})
        agent = AssistantAgent("a", model_client=client, model_context=context)
        await agent.on_messages(say("first"), CancellationToken())
        await agent.on_messages(say("second"), CancellationToken())
        before = await agent.save_state()
        taken = await overloaded_turn(agent, say("third") + say("and more", source="b"))
        assert await agent.save_state() != before
        await taken.restore()
        assert await agent.save_state() == before

    async def test_retry_after_restore_sees_each_message_once(self, context: ChatCompletionContext) -> None:
        """The retried turn ends with the same state as a turn that never failed."""
        failing = AssistantAgent("a", model_client=ThrottledReplayClient(["ok"], throttle={0}), model_context=context)
        taken = await overloaded_turn(failing, say("task"))
        await taken.restore()
        await failing.on_messages(say("task"), CancellationToken())
        clean = AssistantAgent("a", model_client=ReplayChatCompletionClient(["ok"]))
        await clean.on_messages(say("task"), CancellationToken())
        assert await failing.save_state() == await clean.save_state()

    async def test_checkpoint_does_not_save_state(
        self, context: ChatCompletionContext, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Taking a checkpoint dumps neither the agent's state nor its model context's."""
        agent = AssistantAgent("a", model_client=ReplayChatCompletionClient(["x"]), model_context=context)
        await agent.on_messages(say("warm"), CancellationToken())
        saved: list[str] = []

        async def spy(*args: Any) -> Mapping[str, Any]:
            saved.append("called")
            return {}

        monkeypatch.setattr(agent, "save_state", spy)
        monkeypatch.setattr(context, "save_state", spy)
        await checkpoint(agent)
        assert saved == []

    async def test_tool_loop_throttled_on_a_later_call(self, context: ChatCompletionContext) -> None:
        """A tool-call loop whose first model call succeeded and whose next one is throttled is undone whole."""
        client = ThrottledReplayClient(["hello", tool_call("lookup"), "done"], throttle={2})
        agent = AssistantAgent("a", model_client=client, model_context=context, tools=[lookup], max_tool_iterations=3)
        await agent.on_messages(say("hi"), CancellationToken())
        before = await agent.save_state()
        taken = await overloaded_turn(agent, say("look it up"))
        assert len((await agent.save_state())["llm_context"]["messages"]) == len(before["llm_context"]["messages"]) + 3
        await taken.restore()
        assert await agent.save_state() == before

    async def test_reflection_throttled(self, context: ChatCompletionContext) -> None:
        """A reflection call throttled after the tools ran is undone whole."""
        client = ThrottledReplayClient([tool_call("lookup"), "reflected"], throttle={1})
        agent = AssistantAgent(
            "a", model_client=client, model_context=context, tools=[lookup], reflect_on_tool_use=True
        )
        before = await agent.save_state()
        taken = await overloaded_turn(agent, say("look it up"))
        await taken.restore()
        assert await agent.save_state() == before

    async def test_memory_and_handoff_context_undone(self, context: ChatCompletionContext) -> None:
        """Memory results and a handoff's context, added before the throttled call, are taken back."""
        memory = ListMemory()
        await memory.add(MemoryContent(content="likes tea", mime_type=MemoryMimeType.TEXT))
        client = ThrottledReplayClient(["ok"], throttle={0})
        agent = AssistantAgent("a", model_client=client, model_context=context, memory=[memory])
        handoff = HandoffMessage(
            content="over to you",
            target="a",
            source="b",
            context=[UserMessage(content="earlier", source="user"), AssistantMessage(content="sure", source="b")],
        )
        before = await agent.save_state()
        taken = await overloaded_turn(agent, [handoff])
        assert len((await agent.save_state())["llm_context"]["messages"]) == 4  # handoff context, message, memory
        await taken.restore()
        assert await agent.save_state() == before

    async def test_streaming_model_client(self, context: ChatCompletionContext) -> None:
        """A streaming model call throttled mid-turn is undone."""
        client = ThrottledReplayClient(["streamed reply", "second"], throttle={1})
        agent = AssistantAgent("a", model_client=client, model_context=context, model_client_stream=True)
        await agent.on_messages(say("first"), CancellationToken())
        before = await agent.save_state()
        taken = await overloaded_turn(agent, say("second"))
        await taken.restore()
        assert await agent.save_state() == before

    async def test_context_replaced_during_turn_is_loud(self) -> None:
        """A context cleared during the turn cannot be cut back: restore says so rather than guess."""
        agent = AssistantAgent("a", model_client=ReplayChatCompletionClient(["x"]))
        await agent.on_messages(say("first"), CancellationToken())
        taken = await checkpoint(agent)
        await agent.model_context.clear()
        with pytest.raises(RuntimeError, match="replaced or shortened"):
            await taken.restore()


class CountingAgent(BaseChatAgent):
    """A custom agent whose turn changes state the library cannot read, then hits a 429."""

    def __init__(self, name: str) -> None:
        super().__init__(name, description="Counts what it was told.")
        self.heard: list[str] = []
        self.saves = 0

    @property
    def produced_message_types(self) -> Sequence[type[BaseChatMessage]]:
        return (TextMessage,)

    async def on_messages(self, messages: Sequence[BaseChatMessage], cancellation_token: CancellationToken) -> Response:
        self.heard.extend(m.to_text() for m in messages)
        raise rate_limit_error()

    async def on_reset(self, cancellation_token: CancellationToken) -> None:
        self.heard.clear()

    async def save_state(self) -> Mapping[str, Any]:
        self.saves += 1
        return {"heard": list(self.heard)}

    async def load_state(self, state: Mapping[str, Any]) -> None:
        self.heard = list(state["heard"])


class TestFallback:
    """Agents whose turn the library cannot read are saved before the turn and loaded back."""

    async def test_custom_agent(self) -> None:
        """A custom ChatAgent's overloaded turn is undone through its own save_state/load_state."""
        agent = CountingAgent("c")
        agent.heard.append("earlier")
        before = await agent.save_state()
        taken = await checkpoint(agent)
        assert agent.saves == 2
        with pytest.raises(openai.RateLimitError):
            await agent.on_messages(say("now"), CancellationToken())
        assert await agent.save_state() != before
        await taken.restore()
        assert await agent.save_state() == before

    async def test_assistant_subclass_overriding_its_state(self) -> None:
        """An AssistantAgent subclass that keeps more state than its context falls back to save_state."""

        class Noted(AssistantAgent):
            notes = 0

            async def on_messages_stream(
                self, messages: Sequence[BaseChatMessage], cancellation_token: CancellationToken
            ) -> Any:
                self.notes += 1
                async for item in super().on_messages_stream(messages, cancellation_token):
                    yield item

            async def save_state(self) -> Mapping[str, Any]:
                return {**await super().save_state(), "notes": self.notes}

            async def load_state(self, state: Mapping[str, Any]) -> None:
                await super().load_state(state)
                self.notes = state["notes"]

        agent = Noted("n", model_client=ThrottledReplayClient(["x"], throttle={0}))
        before = await agent.save_state()
        taken = await overloaded_turn(agent, say("task"))
        assert agent.notes == 1
        await taken.restore()
        assert await agent.save_state() == before

    @pytest.mark.parametrize("why", ["custom context", "custom memory", "memory moved"])
    async def test_assistant_agent_that_cannot_be_read(self, why: str, monkeypatch: pytest.MonkeyPatch) -> None:
        """A custom model context or memory (or AutoGen's layout moving) falls back to save_state."""

        class ReasoningContext(UnboundedChatCompletionContext):
            async def get_messages(self) -> list[LLMMessage]:
                return list(await super().get_messages())

        class NotedMemory(ListMemory):
            pass

        agent = AssistantAgent(
            "a",
            model_client=ThrottledReplayClient(["x"], throttle={0}),
            model_context=ReasoningContext() if why == "custom context" else None,
            memory=[NotedMemory()] if why == "custom memory" else None,
        )
        saves: list[str] = []
        real = agent.save_state

        async def spy() -> Mapping[str, Any]:
            saves.append("called")
            return await real()

        monkeypatch.setattr(agent, "save_state", spy)
        before = await real()
        memory = vars(agent).pop("_memory") if why == "memory moved" else None
        taken = await checkpoint(agent)
        if why == "memory moved":
            vars(agent)["_memory"] = memory
        with pytest.raises(openai.RateLimitError):
            await agent.on_messages(say("task"), CancellationToken())
        assert saves == ["called"]
        await taken.restore()
        assert await real() == before

    async def test_society_of_mind_agent(self) -> None:
        """A SocietyOfMindAgent (its inner team's state is its own) is saved and loaded back."""
        inner = AssistantAgent("inner", model_client=ReplayChatCompletionClient(["inner reply"]))
        team = RoundRobinGroupChat([inner], max_turns=1)
        agent = SocietyOfMindAgent("som", team=team, model_client=ThrottledReplayClient(["summary"], throttle={0}))
        before = await agent.save_state()
        taken = await checkpoint(agent)
        with pytest.raises(openai.RateLimitError):
            await agent.on_messages(say("task"), CancellationToken())
        await taken.restore()
        assert await agent.save_state() == before

    async def test_nested_team_needs_nothing(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A nested team is not saved: it carries on its own thread."""
        team = RoundRobinGroupChat([CountingAgent("c")], max_turns=1)

        async def refuse() -> Mapping[str, Any]:
            raise AssertionError("a team is not saved")

        monkeypatch.setattr(team, "save_state", refuse)
        taken = await checkpoint(team)
        await taken.restore()


class TestAutoGenLayout:
    """What this module reads of AutoGen 0.7.5; a failure here names what moved."""

    @pytest.mark.parametrize("factory", list(CONTEXTS.values()), ids=list(CONTEXTS))
    async def test_contexts_keep_their_messages_in_one_list(self, factory: Callable[[], ChatCompletionContext]) -> None:
        """Each known context appends to ``_messages`` and saves exactly that list."""
        context = factory()
        assert type(context) in APPEND_ONLY_CONTEXTS
        messages = getattr(context, "_messages", None)
        assert isinstance(messages, list), f"{type(context).__name__}._messages moved"
        message = UserMessage(content="m", source="user")
        await context.add_message(message)
        assert getattr(context, "_messages", None) is messages, f"{type(context).__name__}.add_message replaces"
        assert messages == [message], f"{type(context).__name__}.add_message does not append to _messages"
        assert (await context.save_state())["messages"] == [message.model_dump()]

    def test_assistant_agent_keeps_its_memory_and_turn(self) -> None:
        """AssistantAgent keeps its memory in ``_memory`` and defines every method of its turn itself."""
        agent = AssistantAgent("a", model_client=ReplayChatCompletionClient([]), memory=[ListMemory()])
        assert isinstance(getattr(agent, "_memory", None), list), "AssistantAgent._memory moved"
        for name in ASSISTANT_TURN_METHODS:
            owner = next((k for k in AssistantAgent.__mro__ if name in vars(k)), None)
            assert owner in (AssistantAgent, BaseChatAgent), f"AssistantAgent.{name} moved"


def spy_on_save_state(agent: AssistantAgent, monkeypatch: pytest.MonkeyPatch, calls: list[str]) -> None:
    real = agent.save_state

    async def spy() -> Mapping[str, Any]:
        calls.append(agent.name)
        return await real()

    monkeypatch.setattr(agent, "save_state", spy)


class TestWiring:
    """The team and the tools take a checkpoint, not the member's state, before each turn."""

    async def test_team_saves_no_member_state(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A run of CapacityAwareGroupChat over AssistantAgents never calls their save_state."""
        agents = [AssistantAgent(f"a{i}", model_client=ReplayChatCompletionClient(["r"] * 2)) for i in range(2)]
        calls: list[str] = []
        for agent in agents:
            spy_on_save_state(agent, monkeypatch, calls)
        team = CapacityAwareGroupChat(agents, max_turns=4, ledger=InMemoryLedger())
        result = await team.run(task="go")
        assert len(result.messages) == 5
        assert calls == []

    async def test_tool_saves_no_agent_state(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A call through CapacityAwareAgentTool never calls the AssistantAgent's save_state."""
        writer = AssistantAgent("writer", model_client=ReplayChatCompletionClient(["poem"]))
        calls: list[str] = []
        spy_on_save_state(writer, monkeypatch, calls)
        tool = CapacityAwareAgentTool(writer, AgentCapacity(max_concurrent=1), InMemoryLedger())
        await tool.run(TaskRunnerToolArgs(task="write"), CancellationToken())
        assert calls == []


async def test_an_agent_that_keeps_no_state_needs_no_checkpoint() -> None:
    """An agent with BaseChatAgent's own save_state/load_state (nothing to restore) costs nothing per turn."""
    from agents import WorkerAgent

    agent = WorkerAgent("w")
    calls: list[str] = []
    real = agent.save_state

    async def spy() -> Mapping[str, Any]:
        calls.append("save_state")
        return await real()

    agent.save_state = spy  # type: ignore[method-assign]

    found = await checkpoint(agent)
    await found.restore()

    assert calls == []
