"""The audit of a team's component config: the contract tree and its findings, from JSON alone."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import autogen_core._component_config
import pytest
from autogen_agentchat.base import Team

from autogen_capacity import AgentCapacity, CapacityAwareGroupChat
from autogen_capacity.audit import Audit, Finding, UnusableConfig, audit_config, audit_to_dict, load_config_file
from configs import ROUND_ROBIN, agent, sound, team


def fields(audit: Audit, level: str) -> list[str | None]:
    return [f.field for f in audit.findings if f.level == level]


def only(audit: Audit, level: str = "warning") -> Finding:
    (finding,) = [f for f in audit.findings if f.level == level]
    return finding


class TestTree:
    def test_members_keys_and_contracts(self) -> None:
        """Each member appears with its key and the contract of its capacities entry."""
        config = sound()
        config["config"]["capacities"]["alpha"]["key"] = "gpt-4o"
        audit = audit_config(config)
        by_name = {m.name: m for m in audit.team.members}
        assert list(by_name) == ["alpha", "beta", "gamma"]
        assert by_name["alpha"].key == "gpt-4o"
        assert by_name["beta"].key == "beta"
        assert by_name["gamma"].contract == AgentCapacity(
            max_concurrent=1, rpm=30, backoff_strategy="constant", backoff_initial_ms=500
        )
        assert {m.source for m in audit.team.members} == {"capacities"}

    def test_pool_sums_and_the_declared_capacity_caps(self) -> None:
        """Headroom routing pools the members (4+2+1 slots), and the team's declared 5 slots caps the sum."""
        audit = audit_config(sound())
        assert audit.team.mode == "pool"
        assert audit.team.effective is not None
        assert (audit.team.effective.max_concurrent, audit.team.effective.rpm) == (5, 210)
        slots = audit.team.derivation[0]
        assert (slots.field, dict(slots.members), slots.combined, slots.declared, slots.effective) == (
            "max_concurrent",
            {"alpha": 4, "beta": 2, "gamma": 1},
            7,
            5,
            5,
        )

    def test_round_robin_routing_is_a_pipeline(self) -> None:
        """Round-robin routing makes the team a pipeline: the slowest member bounds it."""
        config = sound()
        config["config"]["routing"] = "round_robin"
        audit = audit_config(config)
        assert audit.team.mode == "pipeline"
        assert audit.team.effective is not None
        assert (audit.team.effective.max_concurrent, audit.team.effective.rpm) == (1, 30)

    def test_nested_team_contributes_its_aggregate(self) -> None:
        """A nested capacity-aware team without an entry counts with its own effective contract and key."""
        inner = team("inner", [agent("x"), agent("y")], capacity={"max_concurrent": 1, "key": "reviewers"})
        audit = audit_config(team("outer", [agent("a"), inner], capacities={"a": {"max_concurrent": 2}}))
        member = audit.team.members[1]
        assert (member.name, member.source, member.key) == ("inner", "nested team", "reviewers")
        assert member.contract is not None
        assert member.contract.max_concurrent == 1
        assert member.team is not None
        assert member.team.effective == member.contract
        assert audit.team.effective is not None
        assert audit.team.effective.max_concurrent == 3

    def test_plain_autogen_team_enforces_nothing(self) -> None:
        """A RoundRobinGroupChat has no contract of its own; a capacity-aware team inside it is still audited."""
        audit = audit_config(team("rr", [agent("a"), sound()], provider=ROUND_ROBIN))
        assert not audit.team.capacity_aware
        assert audit.team.effective is None
        nested = audit.team.members[1].team
        assert nested is not None
        assert nested.capacity_aware
        assert [t.name for t in audit.teams()] == ["rr", "pool"]

    @pytest.mark.parametrize(
        "config",
        [
            sound(),
            team("rr", [agent("a"), agent("b")], capacities={"a": {"max_concurrent": 2}}, routing="round_robin"),
            team(
                "outer",
                [agent("a"), team("inner", [agent("x")], capacities={"x": {"max_concurrent": 3, "tpm": 1000}})],
                capacity={"max_concurrent": 2, "max_caller_retries": 2},
                capacities={"a": {"max_concurrent": 1}},
            ),
        ],
        ids=["pool", "pipeline", "nested"],
    )
    async def test_agrees_with_the_loaded_team(self, config: dict[str, Any]) -> None:
        """What the audit derives from JSON is what the loaded team computes."""
        loaded = CapacityAwareGroupChat.load_component(config)
        audit = audit_config(config)
        assert audit.team.effective == loaded.capacity
        assert {m.name: m.contract for m in audit.team.members} == {
            name: loaded.capacity_of(name) for name in (m.name for m in audit.team.members)
        }

    async def test_accepts_a_component_model(self) -> None:
        """A dumped ComponentModel is audited like its JSON."""
        loaded = CapacityAwareGroupChat.load_component(sound())
        assert audit_config(loaded.dump_component()).team.effective == loaded.capacity

    def test_json_form(self) -> None:
        """The JSON form carries the numbers and each contract's backoff schedule in seconds."""
        data = json.loads(json.dumps(audit_to_dict(audit_config(sound()))))
        assert data["findings"] == []
        assert data["team"]["effective"]["max_concurrent"] == 5
        gamma = data["team"]["members"][2]
        assert gamma["contract"]["backoff_schedule_s"] == [0.5] * 5


class TestSharedKeys:
    @staticmethod
    def shared() -> dict[str, Any]:
        return team(
            "t",
            [agent("a"), agent("b"), agent("c")],
            capacities={
                "a": {"max_concurrent": 8, "key": "gpt-4o"},
                "b": {"max_concurrent": 8, "key": "gpt-4o"},
                "c": {"max_concurrent": 2},
            },
        )

    def test_a_shared_key_counts_once(self) -> None:
        """Two members on one key are one backend: 8 + 2 slots, not 8 + 8 + 2."""
        audit = audit_config(self.shared())
        assert audit.team.effective is not None
        assert audit.team.effective.max_concurrent == 10
        slots = audit.team.derivation[0]
        assert (slots.combined, dict(slots.keys)) == (10, {"gpt-4o": 8, "c": 2})

    async def test_the_loaded_team_agrees(self) -> None:
        """The runtime's ``capacity`` counts the shared key once, as the audit does."""
        config = self.shared()
        loaded = CapacityAwareGroupChat.load_component(config)
        assert loaded.capacity is not None
        assert loaded.capacity.max_concurrent == 10
        assert audit_config(config).team.effective == loaded.capacity


class TestErrors:
    def test_sound_config_has_no_findings(self) -> None:
        """The reference config is sound."""
        assert audit_config(sound()).findings == ()

    @pytest.mark.parametrize(
        ("contract", "field", "fragment"),
        [
            ({"max_concurrent": 0}, "capacities.beta.max_concurrent", "greater than or equal to 1"),
            ({"max_concurent": 2}, "capacities.beta.max_concurent", "is not a contract field"),
            ({"backoff_strategy": "fibonacci"}, "capacities.beta.backoff_strategy", "'fibonacci'"),
            ({"backoff_initial_ms": 5000, "backoff_ceiling_ms": 100}, "capacities.beta", "backoff_ceiling_ms (100)"),
        ],
    )
    def test_invalid_member_contract_names_member_and_field(
        self, contract: dict[str, Any], field: str, fragment: str
    ) -> None:
        """An invalid contract is an error naming the member and the field."""
        config = sound()
        config["config"]["capacities"]["beta"] = contract
        finding = only(audit_config(config), "error")
        assert finding.where == "team 'pool' > member 'beta'"
        assert finding.field == field
        assert fragment in finding.message

    def test_invalid_team_contract(self) -> None:
        """The team's own contract is validated too."""
        config = sound()
        config["config"]["capacity"] = {"rpm": -1}
        finding = only(audit_config(config), "error")
        assert (finding.where, finding.field) == ("team 'pool'", "capacity.rpm")

    def test_entry_for_no_participant(self) -> None:
        """A capacities entry that names no participant is an error."""
        config = sound()
        config["config"]["capacities"]["delta"] = {"max_concurrent": 1}
        finding = only(audit_config(config), "error")
        assert finding.field == "capacities.delta"
        assert "names no participant (participants: alpha, beta, gamma)" in finding.message

    def test_misspelt_team_field(self) -> None:
        """A misspelt config field (here ``capacites``) is an error, not silently ignored."""
        config = sound()
        config["config"]["capacites"] = config["config"].pop("capacities")
        assert "capacites" in fields(audit_config(config), "error")

    def test_duplicate_participant_names(self) -> None:
        """Two participants with one name are an error."""
        assert fields(audit_config(team("t", [agent("a"), agent("a")])), "error") == ["participants"]

    def test_nested_errors_name_the_path(self) -> None:
        """An error inside a nested team names the whole path."""
        inner = team("inner", [agent("x")], capacities={"x": {"max_concurrent": 0}})
        finding = only(audit_config(team("outer", [inner])), "error")
        assert finding.where == "team 'outer' > team 'inner' > member 'x'"


class TestWarnings:
    def test_nested_team_declares_more_than_its_members_supply(self) -> None:
        """A team promising 8 slots over members that have 3 is suspicious."""
        inner = team(
            "inner",
            [agent("x"), agent("y")],
            capacity={"max_concurrent": 8},
            capacities={"x": {"max_concurrent": 2}, "y": {"max_concurrent": 1}},
        )
        finding = only(audit_config(team("outer", [agent("a"), inner])))
        assert finding.where == "team 'outer' > team 'inner'"
        assert finding.field == "capacity.max_concurrent"
        assert "declares max_concurrent=8 but its members (pool) can supply at most 3" in finding.message

    def test_entry_for_nested_team_promises_more_than_it_supplies(self) -> None:
        """A parent's entry for a nested team cannot promise more than the nested team's aggregate."""
        inner = team("inner", [agent("x")], capacities={"x": {"max_concurrent": 1}})
        finding = only(audit_config(team("outer", [inner], capacities={"inner": {"max_concurrent": 4}})))
        assert finding.field == "capacities.inner.max_concurrent"

    def test_member_without_contract(self) -> None:
        """A member without a contract in a team that declares contracts is reported."""
        config = sound()
        del config["config"]["capacities"]["gamma"]
        finding = only(audit_config(config))
        assert (finding.where, finding.field) == ("team 'pool' > member 'gamma'", "capacities.gamma")
        assert "unbounded" in finding.message

    def test_no_contract_anywhere_is_fine(self) -> None:
        """A team with no contracts at all is a plain round robin: nothing to warn about."""
        assert audit_config(team("t", [agent("a"), agent("b")])).findings == ()

    def test_retries_outlast_the_timeout(self) -> None:
        """Retries whose schedule sums past a TimeoutTermination (1+2+4+8+16 = 31 s > 10 s) are reported."""
        config = team("t", [agent("a")], capacities={"a": {"max_concurrent": 1}}, timeout_s=10)
        finding = only(audit_config(config))
        assert finding.field == "capacities.a.max_caller_retries"
        assert "wait up to 31s" in finding.message
        assert "TimeoutTermination(timeout_seconds=10)" in finding.message

    def test_retries_within_the_timeout(self) -> None:
        """A schedule that fits the timeout is fine."""
        config = team("t", [agent("a")], capacities={"a": {"max_concurrent": 1}}, timeout_s=60)
        assert audit_config(config).findings == ()

    def test_enclosing_timeout_bounds_nested_contracts(self) -> None:
        """A parent's timeout bounds the runs of its nested teams too."""
        inner = team("inner", [agent("x")], capacities={"x": {"max_concurrent": 1}})
        finding = only(audit_config(team("outer", [inner], timeout_s=5)))
        assert finding.where == "team 'outer' > team 'inner' > member 'x'"

    def test_shared_key_with_different_contracts(self) -> None:
        """Two members on one key must declare the same contract."""
        config = team(
            "t",
            [agent("a"), agent("b")],
            capacities={"a": {"max_concurrent": 2, "key": "gpt"}, "b": {"max_concurrent": 3, "key": "gpt"}},
        )
        finding = only(audit_config(config))
        assert "shares ledger key 'gpt' with different contracts" in finding.message
        assert "member 'a'" in finding.message
        assert "member 'b'" in finding.message

    def test_shared_key_with_the_same_contract(self) -> None:
        """Replicas declaring one contract on one key are the intended use of ``key``."""
        same = {"max_concurrent": 2, "key": "gpt"}
        assert audit_config(team("t", [agent("a"), agent("b")], capacities={"a": same, "b": same})).findings == ()


class TestUnusable:
    @pytest.mark.parametrize(
        "config",
        [agent("a"), {"provider": "x.Y"}, {"config": {"participants": []}}],
        ids=["agent", "no-config", "no-provider"],
    )
    def test_not_a_team(self, config: dict[str, Any]) -> None:
        """Only a team's component config can be audited."""
        with pytest.raises(UnusableConfig, match="not a team config"):
            audit_config(config)

    def test_missing_file(self, tmp_path: Path) -> None:
        """A missing file is named."""
        with pytest.raises(UnusableConfig, match=r"nope\.json: no such file"):
            load_config_file(tmp_path / "nope.json")

    def test_bad_json(self, tmp_path: Path) -> None:
        """Bad JSON is reported with its position."""
        path = tmp_path / "bad.json"
        path.write_text('{"provider": ')
        with pytest.raises(UnusableConfig, match=r"bad\.json: not valid JSON \(line 1"):
            load_config_file(path)

    def test_json_that_is_not_an_object(self, tmp_path: Path) -> None:
        """A JSON list is not a component config."""
        path = tmp_path / "list.json"
        path.write_text("[]")
        with pytest.raises(UnusableConfig, match="not a component config"):
            load_config_file(path)


class TestProviderNamespaces:
    def test_autogen_core_does_not_read_the_variable(self) -> None:
        """autogen-core 0.7.5 loads any importable provider: it never reads AUTOGEN_ALLOWED_PROVIDER_NAMESPACES.

        If a later version starts reading it, this fails: re-check that our provider is allowed in the docs.
        """
        source = inspect.getsource(autogen_core._component_config)
        assert "AUTOGEN_ALLOWED_PROVIDER_NAMESPACES" not in source

    async def test_config_loads_with_an_allow_list(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """With the allow-list set to our namespaces, our config still loads and audits."""
        monkeypatch.setenv("AUTOGEN_ALLOWED_PROVIDER_NAMESPACES", "autogen_agentchat,autogen_ext,autogen_capacity")
        config = team("outer", [agent("a"), sound()], capacities={"a": {"max_concurrent": 1}})
        loaded = Team.load_component(config)
        assert isinstance(loaded, CapacityAwareGroupChat)
        assert audit_config(config).team.effective == loaded.capacity
