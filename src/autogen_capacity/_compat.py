"""Every piece of AutoGen's private API the library relies on, in one place, pinned to the version it was
written against (``WRITTEN_AGAINST``).

AutoGen exports no group-chat managers, containers or internal events, yet a drop-in team has to subclass
them. Everything private is imported here and nowhere else (``tests/test_compat.py`` checks that), and
:func:`problems` names what moved when a newer AutoGen changes any of it: the private modules and names below,
and the private attributes the library reads on AutoGen's objects (:data:`PRIVATE_ATTRIBUTES`).

Transcribed bodies (code copied from AutoGen because no hook exists) live next to their users and say so:
``CapacityAwareAgentContainer._run_turn`` (``ChatAgentContainer.handle_request``) and ``_relay`` (which frame
of ``ChatAgentContainer.handle_request`` consumes a nested team's stream); the selector's candidate rules
(``SelectorGroupChatManager.select_speaker``) are transcribed here, at the end.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from importlib.metadata import version
from typing import cast

from autogen_agentchat.messages import BaseAgentEvent, BaseChatMessage
from autogen_agentchat.teams._group_chat._chat_agent_container import ChatAgentContainer
from autogen_agentchat.teams._group_chat._events import (
    GroupChatAgentResponse,
    GroupChatError,
    GroupChatMessage,
    GroupChatPause,
    GroupChatRequestPublish,
    GroupChatResume,
    GroupChatStart,
    GroupChatTeamResponse,
    GroupChatTermination,
    SerializableException,
)
from autogen_agentchat.teams._group_chat._round_robin_group_chat import RoundRobinGroupChatManager
from autogen_agentchat.teams._group_chat._selector_group_chat import (
    AsyncCandidateFunc,
    AsyncSelectorFunc,
    CandidateFuncType,
    SelectorFuncType,
    SelectorGroupChatManager,
    SyncCandidateFunc,
    SyncSelectorFunc,
)
from autogen_agentchat.tools._agent import AgentToolConfig
from autogen_agentchat.tools._task_runner_tool import TaskRunnerTool, TaskRunnerToolArgs
from autogen_agentchat.tools._team import TeamToolConfig
from autogen_core._component_config import WELL_KNOWN_PROVIDERS

__all__ = [
    "PRIVATE_ATTRIBUTES",
    "PRIVATE_NAMES",
    "WELL_KNOWN_PROVIDERS",
    "WRITTEN_AGAINST",
    "AgentToolConfig",
    "AsyncCandidateFunc",
    "AsyncSelectorFunc",
    "CandidateFuncType",
    "ChatAgentContainer",
    "GroupChatAgentResponse",
    "GroupChatError",
    "GroupChatMessage",
    "GroupChatPause",
    "GroupChatRequestPublish",
    "GroupChatResume",
    "GroupChatStart",
    "GroupChatTeamResponse",
    "GroupChatTermination",
    "RoundRobinGroupChatManager",
    "SelectorFuncType",
    "SelectorGroupChatManager",
    "SerializableException",
    "SyncCandidateFunc",
    "SyncSelectorFunc",
    "TaskRunnerTool",
    "TaskRunnerToolArgs",
    "TeamToolConfig",
    "problems",
    "selector_candidates",
    "selector_func_speaker",
]

WRITTEN_AGAINST = "0.7.5"
"""The autogen-agentchat / autogen-core release this module (and the transcribed bodies) follow."""

PRIVATE_NAMES: dict[str, tuple[str, ...]] = {
    "autogen_agentchat.teams._group_chat._chat_agent_container": ("ChatAgentContainer",),
    "autogen_agentchat.teams._group_chat._events": (
        "GroupChatAgentResponse",
        "GroupChatError",
        "GroupChatMessage",
        "GroupChatPause",
        "GroupChatRequestPublish",
        "GroupChatResume",
        "GroupChatStart",
        "GroupChatTeamResponse",
        "GroupChatTermination",
        "SerializableException",
    ),
    "autogen_agentchat.teams._group_chat._round_robin_group_chat": ("RoundRobinGroupChatManager",),
    "autogen_agentchat.teams._group_chat._selector_group_chat": (
        "AsyncCandidateFunc",
        "AsyncSelectorFunc",
        "CandidateFuncType",
        "SelectorFuncType",
        "SelectorGroupChatManager",
        "SyncCandidateFunc",
        "SyncSelectorFunc",
    ),
    "autogen_agentchat.tools._agent": ("AgentToolConfig",),
    "autogen_agentchat.tools._task_runner_tool": ("TaskRunnerTool", "TaskRunnerToolArgs"),
    "autogen_agentchat.tools._team": ("TeamToolConfig",),
    "autogen_core._component_config": ("WELL_KNOWN_PROVIDERS",),
}
"""Private modules and the names taken from each."""

PRIVATE_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    # The manager (a subclass of both managers) reads and sets their state and wiring.
    "autogen_agentchat.teams._group_chat._selector_group_chat.SelectorGroupChatManager": (
        "_active_speakers",
        "_allow_repeated_speaker",
        "_apply_termination_condition",
        "_candidate_func",
        "_current_turn",
        "_emit_team_events",
        "_is_candidate_func_async",
        "_is_selector_func_async",
        "_log_speaker_selection",
        "_max_selector_attempts",
        "_message_thread",
        "_output_message_queue",
        "_output_topic_type",
        "_participant_descriptions",
        "_participant_name_to_topic_type",
        "_participant_names",
        "_previous_speaker",
        "_select_speaker",
        "_selector_func",
        "_sequential_message_types",
        "_signal_termination",
        "_signal_termination_with_error",
        "_termination_condition",
        "_transition_to_next_speakers",
    ),
    "autogen_agentchat.teams._group_chat._round_robin_group_chat.RoundRobinGroupChatManager": ("_next_speaker_index",),
    # The container runs a member's turn as AutoGen's does.
    "autogen_agentchat.teams._group_chat._chat_agent_container.ChatAgentContainer": (
        "_agent",
        "_log_message",
        "_message_buffer",
        "_message_factory",
        "_parent_topic_type",
    ),
    # The team wires its own manager and containers into BaseGroupChat.
    "autogen_agentchat.teams.BaseGroupChat": (
        "_create_group_chat_manager_factory",
        "_create_participant_factory",
        "_group_chat_manager_name",
        "_group_chat_manager_topic_type",
        "_is_running",
        "_participants",
        "_runtime",
        "_team_id",
    ),
    # The turn checkpoint reads an assistant's context and memory (see _turn_undo).
    "autogen_agentchat.agents.AssistantAgent": ("_memory", "_model_context"),
    "autogen_core.model_context.UnboundedChatCompletionContext": ("_messages",),
}
"""Private attributes the library reads or overrides, by the class that defines them (checked on instances
where they are set in ``__init__``; on the class otherwise)."""


def problems() -> list[str]:
    """What no longer matches the AutoGen this module was written against: missing private modules or names,
    and (for a different installed version) a note to re-check the transcribed bodies. Empty when all holds."""
    found: list[str] = []
    installed = version("autogen-agentchat")
    if installed != WRITTEN_AGAINST:
        found.append(
            f"autogen-agentchat {installed} is installed; autogen_capacity._compat was written against "
            f"{WRITTEN_AGAINST}: re-check the transcribed bodies it lists"
        )
    for module_name, names in PRIVATE_NAMES.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            found.append(f"{module_name} moved (cannot import it)")
            continue
        found += [f"{module_name}.{name} moved" for name in names if not hasattr(module, name)]
    return found


# -- bodies transcribed from AutoGen 0.7.5's SelectorGroupChatManager.select_speaker --------------------------


async def selector_func_speaker(
    manager: SelectorGroupChatManager, thread: Sequence[BaseAgentEvent | BaseChatMessage]
) -> str | None:
    """The speaker ``selector_func`` names (``None``: it names nobody, or there is no ``selector_func``), checked
    as SelectorGroupChat checks it."""
    if manager._selector_func is None:
        return None
    if manager._is_selector_func_async:
        speaker = await cast(AsyncSelectorFunc, manager._selector_func)(thread)
    else:
        speaker = cast(SyncSelectorFunc, manager._selector_func)(thread)
    if speaker is not None and speaker not in manager._participant_names:
        raise ValueError(
            f"Selector function returned an invalid speaker name: {speaker}. "
            f"Expected one of: {manager._participant_names}."
        )
    return speaker


async def selector_candidates(
    manager: SelectorGroupChatManager, thread: Sequence[BaseAgentEvent | BaseChatMessage]
) -> list[str]:
    """``candidate_func``'s names, else every participant (less the previous speaker when repeats are not
    allowed), as SelectorGroupChat builds them."""
    if manager._candidate_func is not None:
        if manager._is_candidate_func_async:
            names = await cast(AsyncCandidateFunc, manager._candidate_func)(thread)
        else:
            names = cast(SyncCandidateFunc, manager._candidate_func)(thread)
        if not names:
            raise ValueError("Candidate function must return a non-empty list of participant names.")
        if not all(name in manager._participant_names for name in names):
            raise ValueError(
                f"Candidate function returned invalid participant names: {names}. "
                f"Expected one of: {manager._participant_names}."
            )
        return list(names)
    names = manager._participant_names
    if manager._previous_speaker is not None and not manager._allow_repeated_speaker and len(names) > 1:
        return [name for name in names if name != manager._previous_speaker]
    return list(names)
