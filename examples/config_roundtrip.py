"""Contracts in config: dump a team to JSON, audit it as `autogen-capacity inspect`/`check` would, load it back, run.

The JSON file is what you review before deployment; `autogen-capacity check team.json` fails CI on errors.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.conditions import MaxMessageTermination, TimeoutTermination
from autogen_ext.models.replay import ReplayChatCompletionClient

from autogen_capacity import AgentCapacity, CapacityAwareGroupChat
from autogen_capacity.audit import audit_config, load_config_file


def make_team() -> CapacityAwareGroupChat:
    fast = AssistantAgent("fast", model_client=ReplayChatCompletionClient(["fast answer"] * 5))
    slow = AssistantAgent("slow", model_client=ReplayChatCompletionClient(["slow answer"] * 5))
    return CapacityAwareGroupChat(
        [fast, slow],
        name="answerers",
        capacity=AgentCapacity(max_concurrent=4, max_caller_retries=3),  # the team's own promise
        capacities={
            "fast": AgentCapacity(max_concurrent=3, rpm=120, key="gpt-4o-mini"),
            "slow": AgentCapacity(max_concurrent=2, backoff_initial_ms=2000, backoff_ceiling_ms=8000),
        },
        termination_condition=MaxMessageTermination(3) | TimeoutTermination(60),
    )


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "team.json"
        path.write_text(json.dumps(make_team().dump_component().model_dump(mode="json"), indent=2))
        print(f"wrote {path.name} ({path.stat().st_size} bytes)")

        audit = audit_config(load_config_file(path))  # what `autogen-capacity inspect/check` run
        team = audit.team
        print(f"team {team.name!r}: {team.mode} of {[m.name for m in team.members]}, effective {team.effective}")
        for d in team.derivation:
            if d.combined is not None or d.declared is not None:
                print(f"  {d.field}: members {dict(d.members)} -> {d.combined}, declared {d.declared} -> {d.effective}")
        print("findings:", [str(f) for f in audit.findings] or "none")

        config = json.loads(path.read_text())
    asyncio.run(run_loaded(config, team.effective))


async def run_loaded(config: dict[str, Any], audited: AgentCapacity | None) -> None:
    loaded = CapacityAwareGroupChat.load_component(config)
    assert loaded.capacity == audited  # the audit derives what the team computes
    result = await loaded.run(task="Who answers?")
    print("ran the loaded team:", [m.source for m in result.messages], "-", result.stop_reason)


if __name__ == "__main__":
    main()
