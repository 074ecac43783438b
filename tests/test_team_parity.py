"""Drop-in parity of CapacityAwareGroupChat with AutoGen's RoundRobinGroupChat and SelectorGroupChat.

With no capacities declared, CapacityAwareGroupChat must behave exactly like the AutoGen team it
replaces (design invariant I1). The scenarios are ported from AutoGen 0.7.5's own tests
(``python/packages/autogen-agentchat/tests/test_group_chat.py``, ``test_group_chat_pause_resume.py``
and ``test_group_chat_nested.py``). Most tests are parametrized over ``impl`` and assert the literal
results AutoGen's tests assert, so the ``autogen`` case proves the expectation is AutoGen's
behaviour and the ``capacity`` case proves parity. Where the expectation is too long to write out
(selector prompts, streamed chunks), one test runs both teams and compares them.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, cast

import pytest
from autogen_agentchat.agents import AssistantAgent, BaseChatAgent
from autogen_agentchat.base import Response, TaskResult, Team
from autogen_agentchat.conditions import (
    ExternalTermination,
    MaxMessageTermination,
    TextMentionTermination,
)
from autogen_agentchat.messages import (
    BaseAgentEvent,
    BaseChatMessage,
    BaseTextChatMessage,
    ModelClientStreamingChunkEvent,
    MultiModalMessage,
    SelectorEvent,
    SelectSpeakerEvent,
    StopMessage,
    StructuredMessage,
    TextMessage,
)
from autogen_agentchat.teams import BaseGroupChat, RoundRobinGroupChat, SelectorGroupChat
from autogen_core import CancellationToken, ComponentModel, SingleThreadedAgentRuntime
from autogen_core.model_context import BufferedChatCompletionContext
from autogen_core.models import UserMessage
from autogen_ext.models.replay import ReplayChatCompletionClient
from pydantic import BaseModel

from autogen_capacity import CapacityAwareGroupChat, InMemoryLedger

TASK = "Write a program that prints 'Hello, world!'"


# ----------------------------------------------------------------------------------------------
# Scripted agents (deterministic stand-ins for AutoGen's _EchoAgent, _StopAgent, _FlakyAgent, ...)
# ----------------------------------------------------------------------------------------------


class _EchoAgent(BaseChatAgent):
    """Replies with the text of the first message handed to it, or repeats its last reply."""

    def __init__(self, name: str, description: str = "echo agent") -> None:
        super().__init__(name, description)
        self._last_message: str | None = None
        self.calls = 0
        self.resets = 0
        self.log: list[str] = []

    @property
    def produced_message_types(self) -> Sequence[type[BaseChatMessage]]:
        return (TextMessage,)

    async def on_messages(self, messages: Sequence[BaseChatMessage], cancellation_token: CancellationToken) -> Response:
        self.calls += 1
        if messages:
            self._last_message = messages[0].to_text()
        assert self._last_message is not None
        return Response(chat_message=TextMessage(content=self._last_message, source=self.name))

    async def on_reset(self, cancellation_token: CancellationToken) -> None:
        self._last_message = None
        self.resets += 1

    async def on_pause(self, cancellation_token: CancellationToken) -> None:
        self.log.append("pause")

    async def on_resume(self, cancellation_token: CancellationToken) -> None:
        self.log.append("resume")

    async def save_state(self) -> Mapping[str, Any]:
        return {"last_message": self._last_message, "calls": self.calls}

    async def load_state(self, state: Mapping[str, Any]) -> None:
        self._last_message = state.get("last_message")
        self.calls = state.get("calls", 0)


class _StopAgent(_EchoAgent):
    """Echoes until its ``stop_at``-th call, then answers with a StopMessage saying TERMINATE."""

    def __init__(self, name: str, description: str = "stop agent", *, stop_at: int = 1) -> None:
        super().__init__(name, description)
        self._stop_at = stop_at

    @property
    def produced_message_types(self) -> Sequence[type[BaseChatMessage]]:
        return (TextMessage, StopMessage)

    async def on_messages(self, messages: Sequence[BaseChatMessage], cancellation_token: CancellationToken) -> Response:
        if self.calls + 1 < self._stop_at:
            return await super().on_messages(messages, cancellation_token)
        self.calls += 1
        return Response(chat_message=StopMessage(content="TERMINATE", source=self.name))


class _FlakyAgent(_EchoAgent):
    """Raises an ordinary ValueError on its first ``failures`` calls, then echoes."""

    def __init__(self, name: str, description: str = "flaky agent", *, failures: int = 10**9) -> None:
        super().__init__(name, description)
        self._failures = failures

    async def on_messages(self, messages: Sequence[BaseChatMessage], cancellation_token: CancellationToken) -> Response:
        if self._failures > 0:
            self._failures -= 1
            raise ValueError("I am a flaky agent...")
        return await super().on_messages(messages, cancellation_token)


class _HookAgent(_EchoAgent):
    """Echoes, and runs ``hooks[n]`` during its n-th call before answering."""

    def __init__(self, name: str, hooks: Mapping[int, Callable[[], None]]) -> None:
        super().__init__(name, "hook agent")
        self._hooks = hooks

    async def on_messages(self, messages: Sequence[BaseChatMessage], cancellation_token: CancellationToken) -> Response:
        hook = self._hooks.get(self.calls + 1)
        if hook is not None:
            hook()
        return await super().on_messages(messages, cancellation_token)


class _GateAgent(_EchoAgent):
    """Echoes, but its ``block_on``-th call signals ``entered`` and waits for ``release``."""

    def __init__(self, name: str, *, block_on: int = 1) -> None:
        super().__init__(name, "gate agent")
        self._block_on = block_on
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def on_messages(self, messages: Sequence[BaseChatMessage], cancellation_token: CancellationToken) -> Response:
        if self.calls + 1 == self._block_on:
            self.entered.set()
            await self.release.wait()
        return await super().on_messages(messages, cancellation_token)


class _PingMessage(BaseTextChatMessage):
    """A custom chat message type that a team only accepts when it is registered."""

    type: Literal["_PingMessage"] = "_PingMessage"


class _PingAgent(BaseChatAgent):
    """Answers every call with a _PingMessage."""

    @property
    def produced_message_types(self) -> Sequence[type[BaseChatMessage]]:
        return (_PingMessage,)

    async def on_messages(self, messages: Sequence[BaseChatMessage], cancellation_token: CancellationToken) -> Response:
        return Response(chat_message=_PingMessage(content="ping", source=self.name))

    async def on_reset(self, cancellation_token: CancellationToken) -> None:
        pass


class _Note(BaseModel):
    message: str


class _StructuredAgent(BaseChatAgent):
    """Answers with a StructuredMessage, a type teams register automatically from produced_message_types."""

    @property
    def produced_message_types(self) -> Sequence[type[BaseChatMessage]]:
        return (StructuredMessage[_Note],)

    async def on_messages(self, messages: Sequence[BaseChatMessage], cancellation_token: CancellationToken) -> Response:
        return Response(
            chat_message=StructuredMessage[_Note](
                source=self.name,
                content=_Note(message="Structured hello"),
                format_string="Structured says: {message}",
            )
        )

    async def on_reset(self, cancellation_token: CancellationToken) -> None:
        pass


class _InputTask(BaseModel):
    task: str
    data: list[str]


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------

Impl = Literal["autogen", "capacity"]
Message = BaseAgentEvent | BaseChatMessage


def _round_robin(impl: Impl, participants: list[Any], **kwargs: Any) -> BaseGroupChat:
    if impl == "autogen":
        return RoundRobinGroupChat(participants, **kwargs)
    return CapacityAwareGroupChat(participants, ledger=InMemoryLedger(), **kwargs)


def _selector(
    impl: Impl, participants: list[Any], model_client: ReplayChatCompletionClient, **kwargs: Any
) -> BaseGroupChat:
    if impl == "autogen":
        return SelectorGroupChat(participants, model_client, **kwargs)
    return CapacityAwareGroupChat(participants, model_client, ledger=InMemoryLedger(), **kwargs)


def _lines(messages: Sequence[Message]) -> list[str]:
    """Render messages as ``source: text``; the manager's SelectSpeakerEvent as ``select: names``."""
    out: list[str] = []
    for message in messages:
        if isinstance(message, SelectSpeakerEvent):
            out.append(f"select: {', '.join(message.content)}")
        else:
            out.append(f"{message.source}: {message.to_text()}")
    return out


def _sources(messages: Sequence[Message]) -> list[str]:
    return [message.source for message in messages]


def _kinds(messages: Sequence[Message]) -> list[str]:
    return [type(message).__name__ for message in messages]


def _view(messages: Sequence[Message]) -> list[tuple[str, str]]:
    """Type and text of each message: what a drop-in must reproduce (ids and timestamps differ)."""
    return [(type(message).__name__, _lines([message])[0]) for message in messages]


async def _stream(team: Team, **kwargs: Any) -> tuple[list[Message], TaskResult]:
    items: list[Message] = []
    result: TaskResult | None = None
    async for item in team.run_stream(**kwargs):
        if isinstance(item, TaskResult):
            result = item
        else:
            assert result is None, "nothing may follow the TaskResult"
            items.append(item)
    assert result is not None
    return items, result


def _view_without_manager(messages: Sequence[Message]) -> list[tuple[str, str]]:
    """Like _view, but events keep only their text: their source is the manager's name, which differs."""
    return [
        (type(message).__name__, message.to_text() if isinstance(message, BaseAgentEvent) else line)
        for message, (_, line) in zip(messages, _view(messages), strict=True)
    ]


def _model_prompts(client: ReplayChatCompletionClient) -> list[list[Any]]:
    return [call["messages"] for call in client.create_calls]


def _echoes(*names: str) -> list[_EchoAgent]:
    return [_EchoAgent(name) for name in names]


# ----------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------


@pytest.fixture(name="impl", params=["autogen", "capacity"])
def _impl(request: pytest.FixtureRequest) -> Impl:
    return cast(Impl, request.param)


@pytest.fixture(name="make_team")
def _make_team(impl: Impl) -> Callable[..., BaseGroupChat]:
    """RoundRobinGroupChat, or CapacityAwareGroupChat without contracts and without a model client."""

    def make(participants: list[Any], **kwargs: Any) -> BaseGroupChat:
        return _round_robin(impl, participants, **kwargs)

    return make


@pytest.fixture(name="make_selector")
def _make_selector(impl: Impl) -> Callable[..., BaseGroupChat]:
    """SelectorGroupChat, or CapacityAwareGroupChat without contracts and with a model client."""

    def make(participants: list[Any], model_client: ReplayChatCompletionClient, **kwargs: Any) -> BaseGroupChat:
        return _selector(impl, participants, model_client, **kwargs)

    return make


# ----------------------------------------------------------------------------------------------
# Round-robin parity (headroom routing, no contracts)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        (TASK, [f"user: {TASK}", f"a1: {TASK}", f"a2: {TASK}", f"a3: {TASK}"]),
        (
            TextMessage(content=TASK, source="user"),
            [f"user: {TASK}", f"a1: {TASK}", f"a2: {TASK}", f"a3: {TASK}"],
        ),
        (
            [TextMessage(content=TASK, source="user")],
            [f"user: {TASK}", f"a1: {TASK}", f"a2: {TASK}", f"a3: {TASK}"],
        ),
        (
            [TextMessage(content=f"Message {i}", source="user") for i in (1, 2, 3)],
            ["user: Message 1", "user: Message 2", "user: Message 3", "a1: Message 1"],
        ),
        (
            MultiModalMessage(content=[TASK], source="user"),
            [f"user: {TASK}", f"a1: {TASK}", f"a2: {TASK}", f"a3: {TASK}"],
        ),
        (
            [
                StructuredMessage[_InputTask](content=_InputTask(task=TASK, data=["a"]), source="user"),
                TextMessage(content="second", source="user"),
            ],
            None,
        ),
    ],
    ids=["str", "text_message", "message_list", "three_messages", "multi_modal", "structured"],
)
async def test_task_forms(make_team: Callable[..., BaseGroupChat], task: Any, expected: list[str] | None) -> None:
    """Every task form AutoGen accepts yields the same transcript and stop reason."""
    team = make_team(
        _echoes("a1", "a2", "a3"),
        termination_condition=MaxMessageTermination(4),
        custom_message_types=[StructuredMessage[_InputTask]],
    )
    result = await team.run(task=task)
    if expected is None:  # the structured task renders as JSON; a1 echoes the first message
        first = task[0].to_text()
        expected = [f"user: {first}", "user: second", f"a1: {first}", f"a2: {first}"]
    assert _lines(result.messages) == expected
    assert result.stop_reason == "Maximum number of messages 4 reached, current message count: 4"
    first_task = task[0] if isinstance(task, list) else task
    assert _kinds(result.messages)[0] == ("TextMessage" if isinstance(first_task, str) else type(first_task).__name__)


async def test_invalid_tasks_are_rejected_before_running(make_team: Callable[..., BaseGroupChat]) -> None:
    """An empty list, a non-message item or an unregistered message type raise ValueError and leave the team idle."""
    agents = _echoes("a1", "a2")
    team = make_team(agents, max_turns=1)
    with pytest.raises(ValueError, match="Task list cannot be empty"):
        await team.run(task=[])
    with pytest.raises(ValueError, match="All messages in task list must be valid BaseChatMessage types"):
        await team.run(task=["not a message"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"Message type .*_PingMessage.* is not registered"):
        await team.run(task=_PingMessage(content="ping", source="user"))
    assert [agent.calls for agent in agents] == [0, 0]
    result = await team.run(task="go")
    assert _lines(result.messages) == ["user: go", "a1: go"]


async def test_output_task_messages_false(make_team: Callable[..., BaseGroupChat]) -> None:
    """With output_task_messages=False neither run() nor run_stream() reports the task messages."""
    team = make_team(_echoes("a1", "a2"), termination_condition=MaxMessageTermination(3))
    result = await team.run(task=TASK, output_task_messages=False)
    assert _lines(result.messages) == [f"a1: {TASK}", f"a2: {TASK}"]
    assert result.stop_reason == "Maximum number of messages 3 reached, current message count: 3"

    await team.reset()
    streamed, final = await _stream(team, task=TextMessage(content=TASK, source="user"), output_task_messages=False)
    assert _view(streamed) == _view(final.messages) == _view(result.messages)
    assert final.stop_reason == result.stop_reason


async def test_run_stream_matches_run(
    make_team: Callable[..., BaseGroupChat], runtime: SingleThreadedAgentRuntime | None
) -> None:
    """run_stream yields exactly result.messages, in order, then one TaskResult equal to what run() returns."""
    agents = [_EchoAgent("a1"), _StopAgent("a2", stop_at=2)]
    team = make_team(agents, termination_condition=TextMentionTermination("TERMINATE"), runtime=runtime)
    result = await team.run(task=TASK)
    assert _view(result.messages) == [
        ("TextMessage", f"user: {TASK}"),
        ("TextMessage", f"a1: {TASK}"),
        ("TextMessage", f"a2: {TASK}"),
        ("TextMessage", f"a1: {TASK}"),
        ("StopMessage", "a2: TERMINATE"),
    ]
    assert result.stop_reason == "Text 'TERMINATE' mentioned"

    await team.reset()
    agents[1].calls = 0
    streamed, final = await _stream(team, task=TASK)
    assert _view(streamed) == _view(final.messages) == _view(result.messages)
    assert final.stop_reason == result.stop_reason


async def test_max_turns_resume_and_reset(
    make_team: Callable[..., BaseGroupChat], runtime: SingleThreadedAgentRuntime | None
) -> None:
    """max_turns counts per run, run() without a task resumes the rotation, and reset() restarts it."""
    team = make_team(_echoes("agent_1", "agent_2", "agent_3", "agent_4"), max_turns=3, runtime=runtime)
    result = await team.run(task=TASK)
    assert _sources(result.messages) == ["user", "agent_1", "agent_2", "agent_3"]
    assert result.stop_reason == "Maximum number of turns 3 reached."

    result = await team.run()
    assert _sources(result.messages) == ["agent_4", "agent_1", "agent_2"]
    assert result.stop_reason == "Maximum number of turns 3 reached."

    await team.reset()
    result = await team.run(task=TASK)
    assert _sources(result.messages) == ["user", "agent_1", "agent_2", "agent_3"]
    assert result.stop_reason == "Maximum number of turns 3 reached."


async def test_message_termination_resume_and_reset(
    make_team: Callable[..., BaseGroupChat], runtime: SingleThreadedAgentRuntime | None
) -> None:
    """MaxMessageTermination counts the task, resets when it fires, and run() without a task resumes."""
    agents = _echoes("agent_1", "agent_2", "agent_3", "agent_4")
    team = make_team(agents, termination_condition=MaxMessageTermination(3), runtime=runtime)
    result = await team.run(task=TASK)
    assert _sources(result.messages) == ["user", "agent_1", "agent_2"]
    assert result.stop_reason == "Maximum number of messages 3 reached, current message count: 3"

    result = await team.run()
    assert _sources(result.messages) == ["agent_3", "agent_4", "agent_1"]
    assert result.stop_reason == "Maximum number of messages 3 reached, current message count: 3"

    await team.reset()
    assert [agent.resets for agent in agents] == [1, 1, 1, 1]
    result = await team.run(task=TASK)
    assert _sources(result.messages) == ["user", "agent_1", "agent_2"]


async def test_new_task_continues_rotation(make_team: Callable[..., BaseGroupChat]) -> None:
    """A new task without reset() is appended to the thread and the rotation carries on where it stopped."""
    team = make_team(_echoes("a1", "a2", "a3"), max_turns=2)
    result = await team.run(task="first")
    assert _lines(result.messages) == ["user: first", "a1: first", "a2: first"]
    result = await team.run(task="second")
    assert _lines(result.messages) == ["user: second", "a3: first", "a1: first"]
    assert result.stop_reason == "Maximum number of turns 2 reached."


async def test_text_mention_termination_on_task_messages(make_team: Callable[..., BaseGroupChat]) -> None:
    """The termination condition also sees the task messages, so a task that mentions TERMINATE stops at once."""
    agents = _echoes("a1", "a2")
    team = make_team(agents, termination_condition=TextMentionTermination("TERMINATE"))
    result = await team.run(task="Please TERMINATE")
    assert _lines(result.messages) == ["user: Please TERMINATE"]
    assert result.stop_reason == "Text 'TERMINATE' mentioned"
    assert [agent.calls for agent in agents] == [0, 0]


async def test_external_termination(make_team: Callable[..., BaseGroupChat]) -> None:
    """ExternalTermination set during a turn stops the run after that turn, and the team resumes afterwards."""
    termination = ExternalTermination()
    agents = [_EchoAgent("a1"), _HookAgent("a2", {1: termination.set}), _EchoAgent("a3")]
    team = make_team(agents, termination_condition=termination, max_turns=4)
    result = await team.run(task="t")
    assert _lines(result.messages) == ["user: t", "a1: t", "a2: t"]
    assert result.stop_reason == "External termination requested"

    result = await team.run()
    assert _sources(result.messages) == ["a3", "a1", "a2", "a3"]
    assert result.stop_reason == "Maximum number of turns 4 reached."


async def test_external_termination_set_before_run(make_team: Callable[..., BaseGroupChat]) -> None:
    """ExternalTermination set before run() ends the run right after the task messages."""
    termination = ExternalTermination()
    agents = _echoes("a1", "a2")
    team = make_team(agents, termination_condition=termination)
    termination.set()
    result = await team.run(task="t")
    assert _lines(result.messages) == ["user: t"]
    assert result.stop_reason == "External termination requested"
    assert [agent.calls for agent in agents] == [0, 0]


async def test_reset_resets_termination_condition(make_team: Callable[..., BaseGroupChat]) -> None:
    """reset() resets the termination condition, so a set() made before reset() does not end the next run."""
    termination = ExternalTermination()
    agents = _echoes("a1", "a2")
    team = make_team(agents, termination_condition=termination, max_turns=2)
    await team.run(task="t")
    termination.set()
    await team.reset()
    assert [agent.resets for agent in agents] == [1, 1]
    result = await team.run(task="t")
    assert _lines(result.messages) == ["user: t", "a1: t", "a2: t"]
    assert result.stop_reason == "Maximum number of turns 2 reached."


async def test_single_participant(make_team: Callable[..., BaseGroupChat]) -> None:
    """A single participant is the only speaker and speaks on every turn."""
    team = make_team([_EchoAgent("solo")], max_turns=3)
    result = await team.run(task="t")
    assert _lines(result.messages) == ["user: t", "solo: t", "solo: t", "solo: t"]
    assert result.stop_reason == "Maximum number of turns 3 reached."


async def test_save_state_and_load_into_fresh_team(
    make_team: Callable[..., BaseGroupChat], runtime: SingleThreadedAgentRuntime | None
) -> None:
    """State saved from a stopped team, loaded into a fresh team, continues exactly where the first would."""
    team1 = make_team(_echoes("a1", "a2", "a3"), termination_condition=MaxMessageTermination(3), runtime=runtime)
    await team1.run(task=TASK)
    state = await team1.save_state()
    assert {"a1", "a2", "a3"} < set(state["agent_states"])

    team2 = make_team(_echoes("a1", "a2", "a3"), termination_condition=MaxMessageTermination(3), runtime=runtime)
    await team2.load_state(state)
    assert await team2.save_state() == state

    continued = await team2.run()
    original = await team1.run()
    assert _lines(continued.messages) == _lines(original.messages) == [f"a3: {TASK}", f"a1: {TASK}", f"a2: {TASK}"]
    assert continued.stop_reason == original.stop_reason


async def test_concurrent_run_and_reset_are_rejected(make_team: Callable[..., BaseGroupChat]) -> None:
    """While a run is in flight, run() raises ValueError and reset()/load_state() raise RuntimeError."""
    gate = _GateAgent("a1")
    team = make_team([gate, _EchoAgent("a2")], max_turns=1)
    state = await team.save_state()
    run_task = asyncio.create_task(team.run(task="t"))
    await gate.entered.wait()
    with pytest.raises(ValueError, match="The team is already running"):
        await team.run(task="again")
    with pytest.raises(RuntimeError, match="currently running"):
        await team.reset()
    with pytest.raises(RuntimeError, match="cannot be loaded while it is running"):
        await team.load_state(state)
    gate.release.set()
    result = await run_task
    assert _lines(result.messages) == ["user: t", "a1: t"]
    result = await team.run()
    assert _lines(result.messages) == ["a2: t"]


async def test_pause_and_resume_reach_every_participant(
    make_team: Callable[..., BaseGroupChat], runtime: SingleThreadedAgentRuntime | None
) -> None:
    """pause()/resume() call on_pause/on_resume on every participant mid-turn, without ending the run."""
    gate = _GateAgent("a1")
    other = _EchoAgent("a2")
    team = make_team([gate, other], max_turns=1, runtime=runtime)
    with pytest.raises(RuntimeError, match="has not been initialized"):
        await team.pause()

    run_task = asyncio.create_task(team.run(task="t"))
    await gate.entered.wait()
    await team.pause()
    assert gate.log == other.log == ["pause"]
    assert not run_task.done()
    await team.resume()
    assert gate.log == other.log == ["pause", "resume"]

    gate.release.set()
    result = await run_task
    assert _lines(result.messages) == ["user: t", "a1: t"]
    assert result.stop_reason == "Maximum number of turns 1 reached."


async def test_cancellation(
    make_team: Callable[..., BaseGroupChat], runtime: SingleThreadedAgentRuntime | None
) -> None:
    """Cancelling the token mid-turn raises CancelledError, and run() afterwards resumes to the same stop reason."""
    gate = _GateAgent("agent_2")
    team = make_team([_EchoAgent("agent_1"), gate, _EchoAgent("agent_3")], max_turns=6, runtime=runtime)
    token = CancellationToken()
    run_task = asyncio.create_task(team.run(task=TASK, cancellation_token=token))
    await gate.entered.wait()
    token.cancel()
    gate.release.set()
    with pytest.raises(asyncio.CancelledError):
        await run_task
    if runtime is not None:  # the turn in flight finishes in the shared runtime: let it settle
        await runtime.stop_when_idle()
        runtime.start()

    result = await team.run()
    assert result.stop_reason == "Maximum number of turns 6 reached."
    # AutoGen itself differs by runtime: the embedded runtime drains the turn in flight, so its reply
    # counts and the rotation moves on; on a shared runtime that reply is lost and agent_2 is asked again.
    if runtime is None:
        assert _sources(result.messages) == ["agent_3", "agent_1", "agent_2", "agent_3"]
    else:
        assert _sources(result.messages) == ["agent_2", "agent_3", "agent_1", "agent_2", "agent_3"]


async def test_a_token_serves_runs_before_and_after_it_is_cancelled(
    make_team: Callable[..., BaseGroupChat], runtime: SingleThreadedAgentRuntime | None
) -> None:
    """One token passed to several runs: each runs to its end while it is not cancelled; cancelled between runs, it
    cancels nothing that ended, and the next run on it raises CancelledError at once."""
    agents = _echoes("agent_1", "agent_2")
    team = make_team(agents, max_turns=2, runtime=runtime)
    token = CancellationToken()
    for _ in range(2):
        result = await team.run(task=TASK, cancellation_token=token)
        assert result.stop_reason == "Maximum number of turns 2 reached."
    gc.collect()  # a run's own token goes with its run
    token.cancel()
    with pytest.raises(asyncio.CancelledError):
        await team.run(task=TASK, cancellation_token=token)
    assert [agent.calls for agent in agents] == [2, 2]


async def test_agent_exception_surfaces_as_runtime_error(
    make_team: Callable[..., BaseGroupChat], runtime: SingleThreadedAgentRuntime | None
) -> None:
    """An ordinary exception in an agent ends the run with a RuntimeError naming it, and nobody else is asked."""
    agents = [_EchoAgent("agent_1"), _FlakyAgent("agent_2"), _EchoAgent("agent_3")]
    team = make_team(agents, termination_condition=MaxMessageTermination(3), runtime=runtime)
    with pytest.raises(RuntimeError, match=r"ValueError: I am a flaky agent\.\.\.") as info:
        await team.run(task=TASK)
    assert not isinstance(info.value, ValueError)
    assert [agent.calls for agent in agents] == [1, 0, 0]


async def test_emit_team_events(make_team: Callable[..., BaseGroupChat]) -> None:
    """emit_team_events=True adds one SelectSpeakerEvent before each turn, in run() and run_stream() alike."""
    team = make_team(_echoes("a1", "a2"), max_turns=3, emit_team_events=True)
    result = await team.run(task="t")
    assert _view(result.messages) == [
        ("TextMessage", "user: t"),
        ("SelectSpeakerEvent", "select: a1"),
        ("TextMessage", "a1: t"),
        ("SelectSpeakerEvent", "select: a2"),
        ("TextMessage", "a2: t"),
        ("SelectSpeakerEvent", "select: a1"),
        ("TextMessage", "a1: t"),
    ]
    await team.reset()
    streamed, final = await _stream(team, task="t")
    assert _view(streamed) == _view(final.messages) == _view(result.messages)


async def test_no_team_events_by_default(make_team: Callable[..., BaseGroupChat]) -> None:
    """Without emit_team_events the stream carries only the participants' messages."""
    team = make_team(_echoes("a1", "a2"), max_turns=2)
    streamed, final = await _stream(team, task="t")
    assert _kinds(streamed) == ["TextMessage"] * 3
    assert _view(streamed) == _view(final.messages)


async def test_custom_message_types(make_team: Callable[..., BaseGroupChat]) -> None:
    """An unregistered agent message type fails the run; registered via custom_message_types it flows and saves."""
    unregistered = make_team([_PingAgent("pinger", "pings"), _EchoAgent("a2")], max_turns=2)
    with pytest.raises(RuntimeError, match=r"Message type .*_PingMessage.* not registered"):
        await unregistered.run(task="t")

    team = make_team(
        [_PingAgent("pinger", "pings"), _EchoAgent("a2")], max_turns=2, custom_message_types=[_PingMessage]
    )
    result = await team.run(task=_PingMessage(content="hello", source="user"))
    assert _view(result.messages) == [
        ("_PingMessage", "user: hello"),
        ("_PingMessage", "pinger: ping"),
        ("TextMessage", "a2: hello"),
    ]
    state = await team.save_state()
    fresh = make_team(
        [_PingAgent("pinger", "pings"), _EchoAgent("a2")], max_turns=2, custom_message_types=[_PingMessage]
    )
    await fresh.load_state(state)
    assert await fresh.save_state() == state


async def test_structured_message_types_register_automatically(make_team: Callable[..., BaseGroupChat]) -> None:
    """StructuredMessage types in produced_message_types are registered without custom_message_types."""
    team = make_team([_StructuredAgent("structured", "emits structured"), _EchoAgent("echo")], max_turns=2)
    result = await team.run(task="Say something structured")
    assert _kinds(result.messages) == ["TextMessage", "StructuredMessage[_Note]", "TextMessage"]
    assert isinstance(result.messages[1], StructuredMessage)
    assert result.messages[1].to_text() == "Structured says: Structured hello"


async def test_termination_condition_error_surfaces_unchanged(make_team: Callable[..., BaseGroupChat]) -> None:
    """An exception raised by the termination condition on the task messages reaches the caller as is."""

    class _Boom(MaxMessageTermination):
        async def __call__(self, messages: Sequence[Message]) -> StopMessage | None:
            raise ValueError("I am a flaky termination...")

    team = make_team(_echoes("a1", "a2"), termination_condition=_Boom(10))
    with pytest.raises(ValueError, match=r"I am a flaky termination\.\.\."):
        await team.run(task="t")


# ----------------------------------------------------------------------------------------------
# Nested teams
# ----------------------------------------------------------------------------------------------


async def test_round_robin_team_nested_inside(make_team: Callable[..., BaseGroupChat]) -> None:
    """A RoundRobinGroupChat participant speaks its whole inner run as one turn of the outer team."""
    inner = RoundRobinGroupChat(_echoes("i1", "i2"), max_turns=2, name="inner", description="inner team")
    outer = make_team([inner, _EchoAgent("reviewer")], max_turns=3)
    result = await outer.run(task="t")
    assert _lines(result.messages) == ["user: t", "i1: t", "i2: t", "reviewer: t", "i1: t", "i2: t"]
    assert result.stop_reason == "Maximum number of turns 3 reached."


@pytest.mark.parametrize("inner_impl", ["autogen", "capacity"])
async def test_team_nested_inside_round_robin(inner_impl: Impl) -> None:
    """Either team nested inside a plain RoundRobinGroupChat gives the parent the same transcript."""
    inner = _round_robin(inner_impl, _echoes("i1", "i2"), max_turns=2, name="inner", description="inner team")
    outer = RoundRobinGroupChat([_EchoAgent("writer"), inner], termination_condition=MaxMessageTermination(6))
    result = await outer.run(task="t")
    # The parent checks its termination once per turn, after the nested team's whole run.
    assert _lines(result.messages) == ["user: t", "writer: t", "i1: t", "i2: t", "writer: t", "i1: t", "i2: t"]
    assert result.stop_reason == "Maximum number of messages 6 reached, current message count: 7"


async def test_pause_reaches_agents_of_nested_team(make_team: Callable[..., BaseGroupChat]) -> None:
    """pause()/resume() on the outer team are forwarded to the agents of a nested team."""
    gate = _GateAgent("i1")
    inner = RoundRobinGroupChat([gate, _EchoAgent("i2")], max_turns=1, name="inner", description="inner team")
    outer = make_team([inner, _EchoAgent("reviewer")], max_turns=1)
    run_task = asyncio.create_task(outer.run(task="t"))
    await gate.entered.wait()
    await outer.pause()
    await outer.resume()
    assert gate.log == ["pause", "resume"]
    gate.release.set()
    result = await run_task
    assert _lines(result.messages) == ["user: t", "i1: t"]


# ----------------------------------------------------------------------------------------------
# Selector parity (routing="selector" when a model client is given)
# ----------------------------------------------------------------------------------------------


async def test_selector_group_chat(
    make_selector: Callable[..., BaseGroupChat], runtime: SingleThreadedAgentRuntime | None
) -> None:
    """The model's replies pick the speakers, one model call per turn, and the stream matches the result."""
    client = ReplayChatCompletionClient(["agent3", "agent2", "agent1", "agent2", "agent1"])
    agent1 = _StopAgent("agent1", "echo agent 1", stop_at=2)
    team = make_selector(
        [agent1, _EchoAgent("agent2", "echo agent 2"), _EchoAgent("agent3", "echo agent 3")],
        client,
        termination_condition=TextMentionTermination("TERMINATE"),
        runtime=runtime,
    )
    result = await team.run(task=TASK)
    assert _sources(result.messages) == ["user", "agent3", "agent2", "agent1", "agent2", "agent1"]
    assert _kinds(result.messages)[-1] == "StopMessage"
    assert result.stop_reason == "Text 'TERMINATE' mentioned"
    assert len(client.create_calls) == 5

    client.reset()
    agent1.calls = 0
    await team.reset()
    streamed, final = await _stream(team, task=TASK)
    assert _view(streamed) == _view(final.messages) == _view(result.messages)


async def test_selector_two_speakers_skips_model_with_one_candidate(
    make_selector: Callable[..., BaseGroupChat],
) -> None:
    """With repeats disallowed by default, two participants alternate after a single model call."""
    client = ReplayChatCompletionClient(["agent2"])
    team = make_selector(
        [_StopAgent("agent1", stop_at=2), _EchoAgent("agent2")],
        client,
        termination_condition=TextMentionTermination("TERMINATE"),
    )
    result = await team.run(task=TASK)
    assert _sources(result.messages) == ["user", "agent2", "agent1", "agent2", "agent1"]
    assert result.stop_reason == "Text 'TERMINATE' mentioned"
    assert len(client.create_calls) == 1


async def test_selector_allow_repeated_speaker(make_selector: Callable[..., BaseGroupChat]) -> None:
    """allow_repeated_speaker=True lets the model pick the same speaker twice in a row."""
    client = ReplayChatCompletionClient(["agent2", "agent2", "agent1"])
    team = make_selector(
        [_StopAgent("agent1", stop_at=1), _EchoAgent("agent2")],
        client,
        termination_condition=TextMentionTermination("TERMINATE"),
        allow_repeated_speaker=True,
    )
    result = await team.run(task=TASK)
    assert _sources(result.messages) == ["user", "agent2", "agent2", "agent1"]
    assert len(client.create_calls) == 3


@pytest.mark.parametrize(
    ("replies", "max_turns", "speakers", "calls"),
    [
        (["agent2, agent3", "agent2"], 1, ["agent2"], 2),
        (["agent2, agent3", "agent5", "agent3, agent1"], 1, ["agent1"], 3),
        (["agent2", "agent2", "agent2", "agent2"], 2, ["agent2", "agent2"], 4),
    ],
    ids=["success_after_2_attempts", "fall_back_to_first_after_3", "fall_back_to_previous_after_3"],
)
async def test_selector_retries(
    make_selector: Callable[..., BaseGroupChat],
    replies: list[str],
    max_turns: int,
    speakers: list[str],
    calls: int,
) -> None:
    """Invalid or repeated picks are retried up to max_selector_attempts, then fall back like SelectorGroupChat."""
    client = ReplayChatCompletionClient(replies)
    team = make_selector(
        [_StopAgent("agent1", stop_at=1), _EchoAgent("agent2"), _EchoAgent("agent3")], client, max_turns=max_turns
    )
    result = await team.run(task=TASK)
    assert _sources(result.messages) == ["user", *speakers]
    assert len(client.create_calls) == calls


@pytest.mark.parametrize(
    "scenario",
    ["retries", "custom_prompt", "model_context"],
)
async def test_selector_prompts_match(scenario: str) -> None:
    """The model sees the same prompts and retry feedback from both teams, so replayed answers select alike."""
    replies = ["agent2, agent3", "agent2", "nobody", "agent1", "agent3"]
    runs: dict[Impl, tuple[list[str], list[list[Any]]]] = {}
    for impl in ("autogen", "capacity"):
        client = ReplayChatCompletionClient(replies)
        kwargs: dict[str, Any] = {"max_turns": 3}
        if scenario == "custom_prompt":
            kwargs["selector_prompt"] = "Pick one of {participants}.\nRoles:\n{roles}\nHistory:\n{history}"
        if scenario == "model_context":
            context = BufferedChatCompletionContext(buffer_size=3)
            await context.add_message(UserMessage(content="[User] Prefilled message", source="user"))
            kwargs["model_context"] = context
        agents = [_EchoAgent("agent1", "first\nagent"), _EchoAgent("agent2", "second"), _EchoAgent("agent3", "third")]
        team = _selector(impl, agents, client, **kwargs)
        result = await team.run(task=TASK)
        runs[impl] = (_lines(result.messages), _model_prompts(client))
    assert runs["capacity"] == runs["autogen"]
    assert runs["autogen"][0][1:] == [f"agent2: {TASK}", f"agent1: {TASK}", f"agent3: {TASK}"]


async def test_selector_func_overrides_model(make_selector: Callable[..., BaseGroupChat]) -> None:
    """selector_func picks the speaker, and returning None hands that turn to the model."""
    client = ReplayChatCompletionClient(["agent3"])

    def select(messages: Sequence[Message]) -> str | None:
        last = messages[-1].source if messages else None
        return {None: "agent1", "user": "agent1", "agent1": "agent2", "agent2": None, "agent3": "agent4"}.get(
            last, "agent1"
        )

    team = make_selector(
        _echoes("agent1", "agent2", "agent3", "agent4"),
        client,
        selector_func=select,
        termination_condition=MaxMessageTermination(6),
    )
    result = await team.run(task="task")
    assert _sources(result.messages) == ["user", "agent1", "agent2", "agent3", "agent4", "agent1"]
    assert result.stop_reason == "Maximum number of messages 6 reached, current message count: 6"
    assert len(client.create_calls) == 1


async def test_candidate_func_filters_candidates(make_selector: Callable[..., BaseGroupChat]) -> None:
    """candidate_func narrows the candidates; a single candidate speaks without a model call."""
    client = ReplayChatCompletionClient(["agent3"])

    async def candidates(messages: Sequence[Message]) -> list[str]:
        last = messages[-1].source if messages else None
        return {"agent1": ["agent2"], "agent2": ["agent2", "agent3"], "agent3": ["agent4"]}.get(last, ["agent1"])

    team = make_selector(
        _echoes("agent1", "agent2", "agent3", "agent4"),
        client,
        candidate_func=candidates,
        termination_condition=MaxMessageTermination(6),
    )
    result = await team.run(task="task")
    assert _sources(result.messages) == ["user", "agent1", "agent2", "agent3", "agent4", "agent1"]
    assert len(client.create_calls) == 1


async def test_selector_team_events(make_selector: Callable[..., BaseGroupChat]) -> None:
    """With emit_team_events=True each selected turn is announced by a SelectSpeakerEvent."""
    client = ReplayChatCompletionClient(["agent3", "agent2", "agent1", "agent2", "agent1"])
    team = make_selector(
        [_StopAgent("agent1", stop_at=2), _EchoAgent("agent2"), _EchoAgent("agent3")],
        client,
        termination_condition=TextMentionTermination("TERMINATE"),
        emit_team_events=True,
    )
    result = await team.run(task="t")
    assert _view(result.messages) == [
        ("TextMessage", "user: t"),
        ("SelectSpeakerEvent", "select: agent3"),
        ("TextMessage", "agent3: t"),
        ("SelectSpeakerEvent", "select: agent2"),
        ("TextMessage", "agent2: t"),
        ("SelectSpeakerEvent", "select: agent1"),
        ("TextMessage", "agent1: t"),
        ("SelectSpeakerEvent", "select: agent2"),
        ("TextMessage", "agent2: t"),
        ("SelectSpeakerEvent", "select: agent1"),
        ("StopMessage", "agent1: TERMINATE"),
    ]


async def test_selector_streaming_events_match() -> None:
    """With model_client_streaming and team events, both teams stream the same chunks and selector events."""
    runs: dict[Impl, tuple[list[tuple[str, str]], list[tuple[str, str]]]] = {}
    for impl in ("autogen", "capacity"):
        client = ReplayChatCompletionClient(["I pick agent2", "agent1"])
        team = _selector(
            impl, _echoes("agent1", "agent2"), client, max_turns=2, emit_team_events=True, model_client_streaming=True
        )
        streamed, final = await _stream(team, task="t")
        runs[impl] = (_view_without_manager(streamed), _view_without_manager(final.messages))
    assert runs["capacity"] == runs["autogen"]
    kinds = [kind for kind, _ in runs["autogen"][0]]
    assert ModelClientStreamingChunkEvent.__name__ in kinds
    assert SelectorEvent.__name__ in kinds
    assert ModelClientStreamingChunkEvent.__name__ not in [kind for kind, _ in runs["autogen"][1]]


async def test_selector_state_restores_previous_speaker(
    make_selector: Callable[..., BaseGroupChat], runtime: SingleThreadedAgentRuntime | None
) -> None:
    """State loaded into a fresh selector team keeps the thread and the previous speaker, so repeats stay excluded."""
    team1 = make_selector(
        _echoes("agent1", "agent2", "agent3"),
        ReplayChatCompletionClient(["agent2", "agent3"]),
        max_turns=2,
        runtime=runtime,
    )
    result = await team1.run(task="t")
    assert _sources(result.messages) == ["user", "agent2", "agent3"]
    state = await team1.save_state()

    client = ReplayChatCompletionClient(["agent3", "agent1"])
    team2 = make_selector(_echoes("agent1", "agent2", "agent3"), client, max_turns=1, runtime=runtime)
    await team2.load_state(state)
    assert await team2.save_state() == state
    result = await team2.run()
    assert _lines(result.messages) == ["agent1: t"]
    assert len(client.create_calls) == 2
    history = client.create_calls[0]["messages"][0].content
    assert "agent2: t" in history
    assert "agent3: t" in history


async def test_selector_with_nested_team(make_selector: Callable[..., BaseGroupChat]) -> None:
    """The model can select a nested RoundRobinGroupChat by its name, which then runs its inner turns."""
    client = ReplayChatCompletionClient(["inner"])
    inner = RoundRobinGroupChat(_echoes("i1", "i2"), max_turns=2, name="inner", description="writes code")
    team = make_selector([inner, _EchoAgent("reviewer", "reviews code")], client, max_turns=3)
    result = await team.run(task="t")
    assert _lines(result.messages) == ["user: t", "i1: t", "i2: t", "reviewer: t", "i1: t", "i2: t"]
    assert len(client.create_calls) == 1


# ----------------------------------------------------------------------------------------------
# Component config
# ----------------------------------------------------------------------------------------------


def _assistants() -> list[AssistantAgent]:
    return [
        AssistantAgent("a1", model_client=ReplayChatCompletionClient(["one"]), description="first"),
        AssistantAgent("a2", model_client=ReplayChatCompletionClient(["two"]), description="second"),
    ]


@pytest.mark.parametrize("mode", ["headroom", "selector"])
def test_component_round_trip(mode: str) -> None:
    """dump_component -> load_component -> dump_component is stable and names the autogen_capacity provider."""
    termination = MaxMessageTermination(5) | TextMentionTermination("TERMINATE")
    kwargs: dict[str, Any] = {"termination_condition": termination, "max_turns": 7, "emit_team_events": True}
    if mode == "selector":
        kwargs |= {
            "model_client": ReplayChatCompletionClient(["a1"]),
            "selector_prompt": "Custom selector prompt with {roles}, {participants}, {history}",
            "allow_repeated_speaker": True,
            "max_selector_attempts": 2,
        }
    team = CapacityAwareGroupChat(_assistants(), name="team", description="a team", **kwargs)
    config = team.dump_component()
    assert config.provider == "autogen_capacity.CapacityAwareGroupChat"
    assert config.component_type == "team"

    loaded = CapacityAwareGroupChat.load_component(config)
    assert isinstance(loaded, CapacityAwareGroupChat)
    assert loaded.dump_component() == config
    generic = Team.load_component(config)
    assert type(generic) is CapacityAwareGroupChat
    assert generic.dump_component() == config
    assert ComponentModel.model_validate(config.model_dump()) == config


@pytest.mark.parametrize("mode", ["headroom", "selector"])
def test_component_config_shares_autogen_fields(mode: str) -> None:
    """Fields CapacityAwareGroupChat shares with the AutoGen team it replaces are dumped identically."""
    termination = MaxMessageTermination(5)
    if mode == "headroom":
        ours = CapacityAwareGroupChat(_assistants(), termination_condition=termination, max_turns=7)
        theirs = RoundRobinGroupChat(_assistants(), termination_condition=termination, max_turns=7)
        shared = ["participants", "termination_condition", "max_turns", "emit_team_events"]
    else:
        client = ReplayChatCompletionClient(["a1"])
        common: dict[str, Any] = {
            "termination_condition": termination,
            "max_turns": 7,
            "selector_prompt": "Pick from {participants}: {roles} {history}",
            "allow_repeated_speaker": True,
            "max_selector_attempts": 2,
        }
        ours = CapacityAwareGroupChat(_assistants(), client, **common)
        theirs = SelectorGroupChat(_assistants(), client, **common)
        shared = [*common, "participants", "model_client", "emit_team_events", "model_client_streaming"]
    ours_config, theirs_config = ours.dump_component().config, theirs.dump_component().config
    for field in shared:
        assert ours_config[field] == theirs_config[field], field
