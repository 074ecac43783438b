"""The constructor validates its capacity arguments by the config's rules, at construction (issue 16, item 1)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from autogen_agentchat.agents import AssistantAgent
from autogen_ext.models.replay import ReplayChatCompletionClient
from pydantic import ValidationError

from agents import WorkerAgent
from autogen_capacity import (
    AgentCapacity,
    CapacityAwareGroupChat,
    CapacityAwareGroupChatConfig,
    CapacityConfigWarning,
    InMemoryLedger,
)

BAD_ARGUMENTS: list[tuple[dict[str, Any], str]] = [
    ({"routing": "fastest"}, "routing"),
    ({"exhausted_ttl_s": -5}, "exhausted_ttl_s"),
    ({"exhausted_ttl_s": 0}, "exhausted_ttl_s"),
    ({"on_exhausted": "explode"}, "on_exhausted"),
    ({"max_selector_attempts": 0}, "max_selector_attempts"),
    ({"capacity": {"max_concurrent": 0}}, "capacity.max_concurrent"),
    ({"capacity": {"max_concurent": 2}}, "capacity.max_concurent"),
    ({"capacities": {"a": {"rpm": -1}}}, "capacities.a.rpm"),
    ({"capacities": {"a": 3}}, "capacities.a"),
    ({"selector_capacity": {"tpm": 0}}, "selector_capacity.tpm"),
    ({"retry_budget": {"ratio": -1}}, "retry_budget.ratio"),
]


def errors(error: ValidationError) -> list[tuple[tuple[int | str, ...], str]]:
    """What a ValidationError says, without the model's title: each error's location and message."""
    return [(e["loc"], e["msg"]) for e in error.errors()]


class TestSameRulesAsConfig:
    @pytest.mark.parametrize(("arguments", "field"), BAD_ARGUMENTS)
    def test_constructor_refuses_what_the_config_refuses(self, arguments: dict[str, Any], field: str) -> None:
        """A value the config rejects is rejected by the constructor, with the same errors naming the field."""
        with pytest.raises(ValidationError) as from_config:
            CapacityAwareGroupChatConfig.model_validate({"participants": [], **arguments})
        with pytest.raises(ValidationError, match=field.replace(".", r"\.")) as from_python:
            CapacityAwareGroupChat([WorkerAgent("a")], **arguments)
        assert errors(from_python.value) == errors(from_config.value)

    def test_constructor_error_is_titled_by_the_team(self) -> None:
        """The error says it comes from the team's constructor."""
        with pytest.raises(ValidationError, match="validation error for CapacityAwareGroupChat\n"):
            CapacityAwareGroupChat([WorkerAgent("a")], routing="fastest")  # type: ignore[arg-type]

    def test_a_constructed_team_always_dumps_a_loadable_config(self) -> None:
        """Whatever the constructor accepts, its dump loads back."""
        members = [AssistantAgent(name, model_client=ReplayChatCompletionClient(["ok"])) for name in "ab"]
        team = CapacityAwareGroupChat(
            members,
            capacities={"a": {"max_concurrent": 1}},  # type: ignore[dict-item]
            routing="round_robin",
            exhausted_ttl_s=1.5,
        )
        config = team.dump_component()
        loaded = CapacityAwareGroupChat.load_component(config)
        assert loaded.dump_component() == config
        assert loaded.capacity_of("a") == AgentCapacity(max_concurrent=1)


class TestMappingsAreContracts:
    def test_mappings_are_coerced_into_contracts(self) -> None:
        """``capacity``, ``capacities`` and ``selector_capacity`` accept plain mappings, as the config does."""
        team = CapacityAwareGroupChat(
            [WorkerAgent("a"), WorkerAgent("b")],
            capacity={"max_concurrent": 4},  # type: ignore[arg-type]
            capacities={"a": {"max_concurrent": 1, "key": "backend"}},  # type: ignore[dict-item]
            retry_budget={"min_retries": 2},  # type: ignore[arg-type]
        )
        assert team.declared_capacity == AgentCapacity(max_concurrent=4)
        assert team.capacity_of("a") == AgentCapacity(max_concurrent=1, key="backend")
        assert team.key == team.name

    async def test_a_team_built_with_mappings_runs(self) -> None:
        """A mapping contract is enforced at run time (it used to fail with AttributeError: 'dict' ... 'key')."""
        ledger = InMemoryLedger()
        team = CapacityAwareGroupChat(
            [WorkerAgent("a"), WorkerAgent("b")],
            capacity={"max_concurrent": 2},  # type: ignore[arg-type]
            capacities={"a": {"max_concurrent": 1, "key": "backend"}},  # type: ignore[dict-item]
            ledger=ledger,
            max_turns=2,
        )
        result = await asyncio.wait_for(team.run(task="go"), 30)
        assert [m.source for m in result.messages] == ["user", "a", "b"]
        snapshot = await ledger.snapshot()
        assert (snapshot["backend"].acquired, snapshot[team.name].acquired) == (1, 1)
        await ledger.aclose()


class TestParticipants:
    @pytest.mark.parametrize("value", [3, "max_concurrent=3", {"max_concurrent": 3}])
    def test_a_capacity_attribute_that_is_no_contract_is_warned_about(self, value: object) -> None:
        """``agent.capacity = 3`` is not silently ignored: a CapacityConfigWarning names the member and the fix."""
        agent = WorkerAgent("a")
        agent.capacity = value  # type: ignore[assignment]
        with pytest.warns(CapacityConfigWarning, match=r"'a'.*capacities=") as caught:
            team = CapacityAwareGroupChat([agent, WorkerAgent("b")])
        assert team.capacity_of("a") is None
        assert caught[0].filename == __file__

    def test_the_capacities_entry_silences_the_attribute_warning(self) -> None:
        """An entry in ``capacities`` wins over the attribute, so nothing is ignored and nothing is warned."""
        agent = WorkerAgent("a")
        agent.capacity = 3  # type: ignore[assignment]
        team = CapacityAwareGroupChat([agent], capacities={"a": AgentCapacity(max_concurrent=3)})
        assert team.capacity_of("a") == AgentCapacity(max_concurrent=3)

    def test_capacity_of_an_unknown_name_names_it_and_the_participants(self) -> None:
        """``capacity_of("zzz")`` raises a KeyError that says which names exist."""
        team = CapacityAwareGroupChat([WorkerAgent("a"), WorkerAgent("b")], name="crew")
        with pytest.raises(KeyError, match=r"'zzz'.*'crew'.*'a', 'b'"):
            team.capacity_of("zzz")
