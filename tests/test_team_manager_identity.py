"""The manager is recognised by code written for AutoGen's own teams (issue 20): ported from AutoGen 0.7.5's
``test_round_robin_group_chat_state`` and ``test_structured_message_state_roundtrip``, which fetch the manager
through the runtime's public API as a ``RoundRobinGroupChatManager`` and compare its state after a
``save_state`` / ``load_state`` round trip. Run on both runtimes (embedded and SingleThreadedAgentRuntime)."""

from __future__ import annotations

from typing import Any

import pytest
from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.conditions import MaxMessageTermination, TextMentionTermination
from autogen_agentchat.messages import MultiModalMessage, StructuredMessage, TextMessage
from autogen_agentchat.teams._group_chat._round_robin_group_chat import RoundRobinGroupChatManager
from autogen_agentchat.teams._group_chat._selector_group_chat import SelectorGroupChatManager
from autogen_core import AgentId, SingleThreadedAgentRuntime
from autogen_ext.models.replay import ReplayChatCompletionClient
from pydantic import BaseModel

from autogen_capacity import CapacityAwareGroupChat

TASK = "Write a program that prints 'Hello, world!'"


class _InputTask1(BaseModel):
    task: str
    data: list[str]


class _InputTask2(BaseModel):
    task: str
    data: str


STRUCTURED = [StructuredMessage[_InputTask1], StructuredMessage[_InputTask2]]


async def _manager(team: CapacityAwareGroupChat, manager_type: type[Any]) -> Any:
    """The team's manager, fetched as AutoGen's tests (and user code) fetch it."""
    return await team._runtime.try_get_underlying_agent_instance(
        AgentId(f"{team._group_chat_manager_name}_{team._team_id}", team._team_id), manager_type
    )


def _team(client: ReplayChatCompletionClient, runtime: SingleThreadedAgentRuntime | None) -> CapacityAwareGroupChat:
    return CapacityAwareGroupChat(
        [AssistantAgent("agent1", model_client=client), AssistantAgent("agent2", model_client=client)],
        termination_condition=TextMentionTermination("TERMINATE"),
        runtime=runtime,
        custom_message_types=list(STRUCTURED),
    )


@pytest.mark.parametrize(
    "task",
    [
        TASK,
        [TextMessage(content=TASK, source="user")],
        [MultiModalMessage(content=[TASK], source="user")],
        [
            StructuredMessage[_InputTask1](content=_InputTask1(task=TASK, data=["a", "b", "c"]), source="user"),
            StructuredMessage[_InputTask2](content=_InputTask2(task=TASK, data="a"), source="user"),
        ],
    ],
    ids=["text", "text_message", "multi_modal_message", "structured_message"],
)
async def test_round_robin_group_chat_state(task: Any, runtime: SingleThreadedAgentRuntime | None) -> None:
    """A save_state / load_state round trip restores the manager AutoGen's round-robin code inspects."""
    client = ReplayChatCompletionClient(["No facts", "No plan", "print('Hello, world!')", "TERMINATE"])
    team1 = _team(client, runtime)
    await team1.run(task=task)
    state = await team1.save_state()

    team2 = _team(client, runtime)
    await team2.load_state(state)

    assert await team2.save_state() == state
    manager_1 = await _manager(team1, RoundRobinGroupChatManager)
    manager_2 = await _manager(team2, RoundRobinGroupChatManager)
    assert manager_1._current_turn == manager_2._current_turn
    assert manager_1._next_speaker_index == manager_2._next_speaker_index
    assert manager_1._message_thread == manager_2._message_thread
    assert isinstance(manager_2, SelectorGroupChatManager)


async def test_structured_message_state_roundtrip(runtime: SingleThreadedAgentRuntime | None) -> None:
    """Structured messages in the manager's thread survive a round trip and compare equal."""
    client = ReplayChatCompletionClient(["1", "2", "3"])

    def team() -> CapacityAwareGroupChat:
        return CapacityAwareGroupChat(
            [AssistantAgent("agent1", model_client=client)],
            termination_condition=MaxMessageTermination(2),
            runtime=runtime,
            custom_message_types=list(STRUCTURED),
        )

    team1 = team()
    await team1.run(
        task=StructuredMessage[_InputTask1](content=_InputTask1(task=TASK, data=["x"]), source="user"),
    )
    state = await team1.save_state()
    team2 = team()
    await team2.load_state(state)

    manager_1 = await _manager(team1, RoundRobinGroupChatManager)
    manager_2 = await _manager(team2, RoundRobinGroupChatManager)
    assert manager_1._message_thread == manager_2._message_thread
    assert isinstance(manager_2._message_thread[0], StructuredMessage)
    assert await team2.save_state() == state
