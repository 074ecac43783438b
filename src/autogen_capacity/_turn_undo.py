"""Undo an overloaded turn without saving a member's whole state before every turn.

A member's turn that fails with an overload (a 429) is retried later with the same messages, so whatever the
failed turn added to the member must be taken back first. Saving the member's state before every turn does
that, but an ``AssistantAgent``'s state is its whole model context: O(context) per turn, O(turns²) per run.

:func:`checkpoint` is taken before every turn; :meth:`TurnCheckpoint.restore` runs only after an overload.

* A nested :class:`~autogen_agentchat.base.Team` needs nothing (it carries on its own thread): a no-op.
* An ``AssistantAgent`` (its turn, state and memory as AutoGen defines them, in one of AutoGen's four model
  contexts): its state is its model context, and its turn only appends to the context's message list (the
  new messages, memory results from a ``ListMemory``, the model's replies and tool results of a tool-call
  loop whose later model call fails). The checkpoint records the list and its length (O(1)); restore cuts
  the list back.
* Any other agent (custom agents, ``SocietyOfMindAgent``, an ``AssistantAgent`` subclass that overrides its
  turn or its state, a custom model context or memory): ``save_state()`` before, ``load_state()`` to undo.

Written against AutoGen 0.7.5 (``autogen_agentchat.agents._assistant_agent`` and
``autogen_core.model_context``): it reads ``AssistantAgent._memory`` and ``ChatCompletionContext._messages``.
``tests/test_turn_undo.py`` fails loudly, naming what moved, when a later AutoGen changes either; meanwhile
an agent whose context or memory is not where 0.7.5 keeps it falls back to ``save_state()``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from autogen_agentchat.agents import AssistantAgent, BaseChatAgent
from autogen_agentchat.base import ChatAgent, Team
from autogen_core.memory import ListMemory
from autogen_core.model_context import (
    BufferedChatCompletionContext,
    ChatCompletionContext,
    HeadAndTailChatCompletionContext,
    TokenLimitedChatCompletionContext,
    UnboundedChatCompletionContext,
)
from autogen_core.models import LLMMessage

__all__ = ["TurnCheckpoint", "checkpoint"]

APPEND_ONLY_CONTEXTS: frozenset[type[ChatCompletionContext]] = frozenset(
    {
        UnboundedChatCompletionContext,
        BufferedChatCompletionContext,
        HeadAndTailChatCompletionContext,
        TokenLimitedChatCompletionContext,
    }
)
"""Model contexts (exact types) that keep every message in the list ``_messages`` and change it only by
appending (``add_message``) or replacing it (``clear``, ``load_state``); ``get_messages`` only reads it."""

ASSISTANT_TURN_METHODS = (
    "run",
    "run_stream",
    "on_messages",
    "on_messages_stream",
    "save_state",
    "load_state",
    "model_context",
    "_add_messages_to_context",
    "_update_model_context_with_memory",
    "_call_llm",
    "_process_model_result",
    "_reflect_on_tool_use_flow",
)
"""The methods that run an ``AssistantAgent``'s turn (in a team or as a tool) or define its state: a subclass
that overrides one of them may change the agent in ways a cut context does not undo."""

_MOVED = (
    "The model context of {name!r} was replaced or shortened during its overloaded turn, so the turn cannot "
    "be undone by cutting it back (AutoGen's AssistantAgent only appends during a turn: did AutoGen change?)."
)

_MISSING: Any = object()
_plain_assistant: dict[type[Any], bool] = {}
_stateless: dict[type[Any], bool] = {}


class TurnCheckpoint:
    """What a member was before a turn; :meth:`restore` takes the turn back. This base class restores nothing
    (a nested team)."""

    __slots__ = ()

    async def restore(self) -> None:
        """Undo everything the turn changed in the member (may cost O(context); runs only after an overload)."""


class _StateCheckpoint(TurnCheckpoint):
    """The member's saved state, loaded back on restore: for agents whose turn cannot be read."""

    __slots__ = ("_agent", "_state")

    def __init__(self, agent: ChatAgent, state: Mapping[str, Any]) -> None:
        self._agent = agent
        self._state = state

    async def restore(self) -> None:
        await self._agent.load_state(self._state)


class _ContextCheckpoint(TurnCheckpoint):
    """The model context's message list and its length before the turn, cut back to it on restore."""

    __slots__ = ("_context", "_length", "_messages", "_name")

    def __init__(self, name: str, context: ChatCompletionContext, messages: list[LLMMessage]) -> None:
        self._name = name
        self._context = context
        self._messages = messages
        self._length = len(messages)

    async def restore(self) -> None:
        if getattr(self._context, "_messages", None) is not self._messages or len(self._messages) < self._length:
            raise RuntimeError(_MOVED.format(name=self._name))
        del self._messages[self._length :]


_NOTHING = TurnCheckpoint()


async def checkpoint(agent: ChatAgent | Team) -> TurnCheckpoint:
    """Record what ``agent``'s next turn can change, so that :meth:`TurnCheckpoint.restore` can undo it.

    O(1) for a team and for an ``AssistantAgent`` in one of AutoGen's model contexts; ``save_state()`` for
    any other agent.

    Args:
        agent: The member about to take a turn.

    Returns:
        The checkpoint; call :meth:`~TurnCheckpoint.restore` on it to undo the turn (at most once).
    """
    if isinstance(agent, Team) or _keeps_no_state(agent):
        return _NOTHING
    if isinstance(agent, AssistantAgent) and _is_plain_assistant(agent):
        context = agent.model_context
        messages = getattr(context, "_messages", None)
        if type(context) in APPEND_ONLY_CONTEXTS and isinstance(messages, list) and _memory_appends(agent):
            return _ContextCheckpoint(agent.name, context, messages)
    return _StateCheckpoint(agent, await agent.save_state())


def _keeps_no_state(agent: ChatAgent) -> bool:
    """Whether the agent saves and loads no state of its own (``BaseChatAgent``'s ``save_state``/``load_state``):
    its saved state would restore nothing, so its turn needs no checkpoint (cached by class)."""
    cls = type(agent)
    stateless = _stateless.get(cls)
    if stateless is None:
        stateless = all(_defined_by(cls, name) is BaseChatAgent for name in ("save_state", "load_state"))
        _stateless[cls] = stateless
    return stateless


def _is_plain_assistant(agent: AssistantAgent) -> bool:
    """Whether the agent's class runs its turn and keeps its state as ``AssistantAgent`` does (cached by class)."""
    cls = type(agent)
    plain = _plain_assistant.get(cls)
    if plain is None:
        plain = all(_defined_by(cls, name) is _defined_by(AssistantAgent, name) for name in ASSISTANT_TURN_METHODS)
        _plain_assistant[cls] = plain
    return plain


def _defined_by(cls: type[Any], name: str) -> type[Any] | None:
    """The class in ``cls``'s MRO whose own namespace defines ``name``."""
    return next((klass for klass in cls.__mro__ if name in vars(klass)), None)


def _memory_appends(agent: AssistantAgent) -> bool:
    """Whether every memory of the agent only appends to the model context (AutoGen's ``ListMemory``)."""
    memory: list[Any] | None = getattr(agent, "_memory", _MISSING)
    if memory is _MISSING:
        return False
    return not memory or all(type(m) is ListMemory for m in memory)
