"""AutoGen's private API stays behind ``autogen_capacity._compat`` and still matches what it was written
against: a newer AutoGen that moves any of it fails here, naming what moved."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import Any

from autogen_agentchat.agents import AssistantAgent
from autogen_core import AgentId
from autogen_core.model_context import UnboundedChatCompletionContext
from autogen_ext.models.replay import ReplayChatCompletionClient

import autogen_capacity
from autogen_capacity import CapacityAwareGroupChat, InMemoryLedger, _compat
from autogen_capacity._compat import PRIVATE_ATTRIBUTES, problems

SOURCE = Path(autogen_capacity.__file__).parent


def _private_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    modules = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module]
    return [m for m in modules if m.startswith("autogen_") and any(part.startswith("_") for part in m.split("."))]


def test_the_installed_autogen_matches() -> None:
    """Every private module and name the library uses is where AutoGen 0.7.5 keeps it."""
    assert problems() == []


def test_only_the_compat_module_imports_autogen_internals() -> None:
    """No other module of the package imports a private AutoGen module."""
    offenders = {
        str(path.relative_to(SOURCE)): found
        for path in SOURCE.rglob("*.py")
        if path.name != "_compat.py" and (found := _private_imports(path))
    }
    assert offenders == {}


async def test_every_private_attribute_is_still_there() -> None:
    """The private attributes the library reads exist on live AutoGen objects (a team's manager and
    containers after a run, an assistant, a model context)."""
    client = ReplayChatCompletionClient(["hello"])
    agent = AssistantAgent("agent", model_client=client)
    team = CapacityAwareGroupChat([agent], ledger=InMemoryLedger(), max_turns=1)
    await team.run(task="go")
    runtime: Any = team._runtime
    manager = await runtime.try_get_underlying_agent_instance(
        AgentId(team._group_chat_manager_topic_type, team._team_id)
    )
    container = await runtime.try_get_underlying_agent_instance(AgentId(f"agent_{team._team_id}", team._team_id))
    live = {
        "SelectorGroupChatManager": manager,
        "RoundRobinGroupChatManager": manager,
        "ChatAgentContainer": container,
        "BaseGroupChat": team,
        "AssistantAgent": agent,
        "UnboundedChatCompletionContext": UnboundedChatCompletionContext(),
    }
    moved = []
    for owner, attributes in PRIVATE_ATTRIBUTES.items():
        module_name, _, class_name = owner.rpartition(".")
        assert isinstance(live[class_name], getattr(importlib.import_module(module_name), class_name))
        moved += [f"{owner}.{name}" for name in attributes if not hasattr(live[class_name], name)]
    assert moved == []


def test_the_module_lists_what_it_imports() -> None:
    """``PRIVATE_NAMES`` covers every name the module exports from AutoGen (the check is complete)."""
    listed = {name for names in _compat.PRIVATE_NAMES.values() for name in names}
    own = {
        "PRIVATE_ATTRIBUTES",
        "PRIVATE_NAMES",
        "WRITTEN_AGAINST",
        "problems",
        "selector_candidates",
        "selector_func_speaker",
    }
    assert set(_compat.__all__) - own == listed


def test_what_moved_is_named(monkeypatch: Any) -> None:
    """A missing private module or name, or another AutoGen release, is reported by name."""
    monkeypatch.setattr(
        _compat,
        "PRIVATE_NAMES",
        {"autogen_agentchat.teams._group_chat._events": ("GroupChatGone",), "autogen_agentchat._nowhere": ("X",)},
    )
    monkeypatch.setattr(_compat, "WRITTEN_AGAINST", "0.0.1")

    found = problems()

    assert any("0.0.1" in line and "re-check" in line for line in found)
    assert "autogen_agentchat.teams._group_chat._events.GroupChatGone moved" in found
    assert "autogen_agentchat._nowhere moved (cannot import it)" in found
