"""The caller side of the contract: CapacityAwareAgentTool and CapacityAwareTeamTool."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import pytest
from autogen_agentchat.agents import AssistantAgent, BaseChatAgent
from autogen_agentchat.base import Response
from autogen_agentchat.messages import BaseChatMessage, TextMessage, ToolCallExecutionEvent
from autogen_agentchat.tools import AgentTool, TeamTool
from autogen_agentchat.tools._task_runner_tool import TaskRunnerToolArgs
from autogen_core import CancellationToken, ComponentLoader, FunctionCall
from autogen_core.models import CreateResult, RequestUsage
from autogen_ext.models.replay import ReplayChatCompletionClient

from autogen_capacity import (
    AgentCapacity,
    CapacityAwareAgentTool,
    CapacityAwareGroupChat,
    CapacityAwareTeamTool,
    CapacityExhausted,
    InMemoryLedger,
    Overloaded,
)
from autogen_capacity.testing import FakeLoopClock, settle
from faults import QUICK, FlakyReplayClient, RateLimitError

TIMEOUT = 30.0


class Probe:
    """Counts calls in progress and their peak, independently of any ledger (shared by replicas)."""

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0


class ScriptedAgent(BaseChatAgent):
    """Raises the scripted errors in order, then answers; counts calls in progress on its probe."""

    def __init__(
        self,
        name: str,
        errors: Sequence[BaseException] = (),
        *,
        gate: asyncio.Event | None = None,
        probe: Probe | None = None,
    ) -> None:
        super().__init__(name, description=f"Scripted {name}.")
        self._errors = list(errors)
        self._gate = gate
        self.probe = probe or Probe()
        self.calls = 0
        self.received: list[str] = []

    @property
    def running(self) -> int:
        return self.probe.running

    @property
    def peak(self) -> int:
        return self.probe.peak

    @property
    def produced_message_types(self) -> Sequence[type[BaseChatMessage]]:
        return (TextMessage,)

    async def on_messages(self, messages: Sequence[BaseChatMessage], cancellation_token: CancellationToken) -> Response:
        self.calls += 1
        self.received.extend(m.to_text() for m in messages)
        self.probe.running += 1
        self.probe.peak = max(self.probe.peak, self.probe.running)
        try:
            if self._gate is not None:
                await self._gate.wait()
            if self._errors:
                raise self._errors.pop(0)
        finally:
            self.probe.running -= 1
        return Response(chat_message=TextMessage(content=f"{self.name} answer {self.calls}", source=self.name))

    async def on_reset(self, cancellation_token: CancellationToken) -> None:
        pass


class AlwaysFails(ScriptedAgent):
    """Raises a fresh error from ``make`` on every call."""

    def __init__(self, name: str, make: Callable[[], BaseException]) -> None:
        super().__init__(name)
        self._make = make

    async def on_messages(self, messages: Sequence[BaseChatMessage], cancellation_token: CancellationToken) -> Response:
        self._errors = [self._make()]
        return await super().on_messages(messages, cancellation_token)


def args(task: str = "do it") -> TaskRunnerToolArgs:
    return TaskRunnerToolArgs(task=task)


async def in_flight(ledger: InMemoryLedger) -> dict[str, int]:
    return {key: usage.in_flight for key, usage in (await ledger.snapshot()).items() if usage.in_flight}


async def settle_until(condition: Callable[[], bool], rounds: int = 200) -> None:
    for _ in range(rounds):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


class TestConstruction:
    def test_contract_comes_from_argument_then_agent_attribute(self) -> None:
        """The explicit capacity wins; else the agent's own ``capacity``; the key is capacity.key or the name."""
        own = AgentCapacity(max_concurrent=2)
        agent = ScriptedAgent("writer")
        agent.capacity = own  # type: ignore[attr-defined]
        assert CapacityAwareAgentTool(agent, ledger=InMemoryLedger()).capacity == own
        given = AgentCapacity(max_concurrent=1, key="shared-gpu")
        tool = CapacityAwareAgentTool(agent, given, ledger=InMemoryLedger())
        assert (tool.capacity, tool.key, tool.name) == (given, "shared-gpu", "writer")

    def test_team_tool_reads_the_team_aggregate(self) -> None:
        """A CapacityAwareGroupChat's aggregate contract is the team tool's default."""
        team = CapacityAwareGroupChat(
            [ScriptedAgent("a"), ScriptedAgent("b")],
            capacities={"a": AgentCapacity(max_concurrent=1), "b": AgentCapacity(max_concurrent=2)},
            ledger=InMemoryLedger(),
            name="crew",
        )
        tool = CapacityAwareTeamTool(team, "crew_tool", "A crew.", ledger=InMemoryLedger())
        assert tool.capacity.max_concurrent == 3
        assert tool.key == "crew"

    def test_tools_are_agentchat_tools(self) -> None:
        """They are drop-in AgentTool / TeamTool subclasses."""
        agent_tool = CapacityAwareAgentTool(ScriptedAgent("w"), ledger=InMemoryLedger())
        team_tool = CapacityAwareTeamTool(
            CapacityAwareGroupChat([ScriptedAgent("a")], ledger=InMemoryLedger()), "t", "d", ledger=InMemoryLedger()
        )
        assert isinstance(agent_tool, AgentTool)
        assert isinstance(team_tool, TeamTool)


class TestConcurrency:
    async def test_agent_tool_never_exceeds_max_concurrent(self, fake_clock: FakeLoopClock) -> None:
        """Many concurrent callers run the agent at most max_concurrent at a time, the rest wait (no retry spent)."""
        ledger, gate = InMemoryLedger(), asyncio.Event()
        agent = ScriptedAgent("writer", gate=gate)
        tool = CapacityAwareAgentTool(agent, AgentCapacity(max_concurrent=2, **QUICK), ledger)
        calls = [asyncio.ensure_future(tool.run(args(f"t{i}"), CancellationToken())) for i in range(10)]
        await settle_until(lambda: agent.running == 2)
        await settle(*calls)
        assert agent.running == 2
        snapshot = await ledger.snapshot()
        assert (snapshot["writer"].in_flight, snapshot["writer"].waiting) == (2, 8)
        gate.set()
        results = await asyncio.gather(*calls)
        assert agent.peak == 2
        assert len(results) == 10
        assert await in_flight(ledger) == {}

    async def test_team_tool_serializes_a_team_by_its_aggregate(self, fake_clock: FakeLoopClock) -> None:
        """A team tool over a one-member team (max_concurrent=1) runs the team one call at a time."""
        ledger, gate = InMemoryLedger(), asyncio.Event()
        member = ScriptedAgent("w", gate=gate)
        team = CapacityAwareGroupChat(
            [member], capacities={"w": AgentCapacity(max_concurrent=1, **QUICK)}, max_turns=1, ledger=ledger
        )
        tool = CapacityAwareTeamTool(team, "crew", "A crew.", ledger=ledger)
        calls = [asyncio.ensure_future(tool.run(args(f"t{i}"), CancellationToken())) for i in range(4)]
        await settle_until(lambda: member.running == 1)
        await settle(*calls)
        assert (await ledger.snapshot())[tool.key].waiting == 3
        gate.set()
        results = await asyncio.gather(*calls)
        assert member.peak == 1
        assert [r.messages[-1].source for r in results] == ["w"] * 4
        assert await in_flight(ledger) == {}

    async def test_self_leasing_team_replicas_are_not_leased_twice(self, fake_clock: FakeLoopClock) -> None:
        """Replicas of a team that declares max_concurrent=1 lease their shared key themselves; the tools do
        not lease it again (no self-deadlock), and the replicas run one at a time."""
        ledger, gate, probe = InMemoryLedger(), asyncio.Event(), Probe()
        cap = AgentCapacity(max_concurrent=1, **QUICK)
        tools = [
            CapacityAwareTeamTool(
                CapacityAwareGroupChat(
                    [ScriptedAgent("w", gate=gate, probe=probe)], capacity=cap, max_turns=1, ledger=ledger, name="solo"
                ),
                "solo_tool",
                "Solo.",
                ledger=ledger,
            )
            for _ in range(3)
        ]
        calls = [asyncio.ensure_future(tool.run(args(f"t{i}"), CancellationToken())) for i, tool in enumerate(tools)]
        await settle_until(lambda: probe.running == 1)
        await settle(*calls)
        snapshot = await ledger.snapshot()
        assert (snapshot["solo"].in_flight, snapshot["solo"].waiting) == (1, 2)
        gate.set()
        results = await asyncio.gather(*calls)
        assert [r.messages[-1].source for r in results] == ["w"] * 3
        assert probe.peak == 1
        assert await in_flight(ledger) == {}


class TestOverload:
    async def test_gives_up_after_the_contracted_retries(self) -> None:
        """A target that always answers 429 is called 1 + max_caller_retries times, then CapacityExhausted."""
        ledger = InMemoryLedger()
        agent = AlwaysFails("writer", lambda: RateLimitError(429))
        tool = CapacityAwareAgentTool(agent, AgentCapacity(max_caller_retries=3, **QUICK), ledger)
        with pytest.raises(CapacityExhausted, match="after 3 retries") as caught:
            await asyncio.wait_for(tool.run(args(), CancellationToken()), TIMEOUT)
        assert agent.calls == 4
        assert isinstance(caught.value.__cause__, RateLimitError)
        assert await in_flight(ledger) == {}

    async def test_throttled_errors_are_retried_and_succeed(self) -> None:
        """429s and Overloaded are retried by contract until the target answers."""
        ledger = InMemoryLedger()
        agent = ScriptedAgent("writer", [RateLimitError(429), Overloaded("busy"), RateLimitError(503)])
        tool = CapacityAwareAgentTool(agent, AgentCapacity(max_caller_retries=3, **QUICK), ledger)
        result = await asyncio.wait_for(tool.run(args(), CancellationToken()), TIMEOUT)
        assert agent.calls == 4
        assert tool.return_value_as_string(result) == "writer: writer answer 4"
        assert await in_flight(ledger) == {}

    async def test_retry_after_is_honoured_exactly(self, fake_clock: FakeLoopClock) -> None:
        """The provider's Retry-After cools the key down for exactly that long before the retry."""
        ledger = InMemoryLedger()
        agent = ScriptedAgent("writer", [RateLimitError(429, {"Retry-After": "7"})])
        cap = AgentCapacity(max_concurrent=1, max_caller_retries=1, **QUICK)
        tool = CapacityAwareAgentTool(agent, cap, ledger)
        call = asyncio.ensure_future(tool.run(args(), CancellationToken()))
        await settle(call)
        status = await ledger.status("writer", cap)
        assert (agent.calls, status.blocked_by, status.ready_in) == (1, "cooldown", 7.0)
        assert await in_flight(ledger) == {}  # the lease was released while cooling down
        fake_clock.advance(6.5)
        await settle(call)
        assert agent.calls == 1
        fake_clock.advance(0.5)
        await settle_until(call.done)
        assert agent.calls == 2
        assert call.result().messages[-1].source == "writer"

    @pytest.mark.parametrize(
        "error",
        [
            RateLimitError(429, body={"error": {"code": "insufficient_quota"}}),
            RateLimitError(402),
            Overloaded("credit spent", kind="exhausted"),
        ],
        ids=["insufficient_quota", "402", "Overloaded-exhausted"],
    )
    async def test_exhausted_entitlement_is_never_retried(self, error: BaseException) -> None:
        """A spent quota raises CapacityExhausted at once, marks the key exhausted, and refuses later calls."""
        ledger = InMemoryLedger()
        agent = ScriptedAgent("writer", [error])
        cap = AgentCapacity(max_caller_retries=5, **QUICK)
        tool = CapacityAwareAgentTool(agent, cap, ledger)
        with pytest.raises(CapacityExhausted, match="no entitlement left") as caught:
            await asyncio.wait_for(tool.run(args(), CancellationToken()), TIMEOUT)
        assert caught.value.__cause__ is error
        assert agent.calls == 1
        assert (await ledger.status("writer", cap)).blocked_by == "exhausted"
        with pytest.raises(CapacityExhausted):
            await asyncio.wait_for(tool.run(args(), CancellationToken()), TIMEOUT)
        assert agent.calls == 1
        assert await in_flight(ledger) == {}

    async def test_plain_errors_propagate_unchanged(self) -> None:
        """An ordinary exception reaches the caller as raised, with no retry and no cooldown."""
        ledger = InMemoryLedger()
        boom = ValueError("boom")
        agent = ScriptedAgent("writer", [boom])
        cap = AgentCapacity(max_concurrent=1, **QUICK)
        tool = CapacityAwareAgentTool(agent, cap, ledger)
        with pytest.raises(ValueError, match="boom") as caught:
            await tool.run(args(), CancellationToken())
        assert caught.value is boom
        assert agent.calls == 1
        assert (await ledger.status("writer", cap)).blocked_by is None
        assert await in_flight(ledger) == {}

    async def test_cancellation_while_cooling_down_releases_everything(self, fake_clock: FakeLoopClock) -> None:
        """Cancelling through the token during a cooldown wait ends the call with nothing in flight."""
        ledger = InMemoryLedger()
        agent = ScriptedAgent("writer", [RateLimitError(429, {"Retry-After": "30"})])
        tool = CapacityAwareAgentTool(agent, AgentCapacity(max_concurrent=1, **QUICK), ledger)
        token = CancellationToken()
        call = asyncio.ensure_future(tool.run(args(), token))
        await settle(call)
        token.cancel()
        await settle_until(call.done)
        with pytest.raises(asyncio.CancelledError):
            call.result()
        assert agent.calls == 1
        assert await in_flight(ledger) == {}

    async def test_stream_yields_the_target_messages_and_a_result(self) -> None:
        """run_stream yields the agent's messages then the TaskResult, retrying whole after an overload."""
        ledger = InMemoryLedger()
        agent = ScriptedAgent("writer", [Overloaded(retry_after=0.001)])
        tool = CapacityAwareAgentTool(agent, AgentCapacity(**QUICK), ledger)
        items = [item async for item in tool.run_stream(args("hi"), CancellationToken())]
        texts = [item.to_text() for item in items if isinstance(item, BaseChatMessage)]
        assert texts[-1] == "writer answer 2"
        assert await in_flight(ledger) == {}


class TestConfig:
    def _assistant(self, name: str = "writer") -> AssistantAgent:
        return AssistantAgent(name, model_client=ReplayChatCompletionClient(["ok"]), description="Writes.")

    def test_agent_tool_round_trip_keeps_the_contract(self) -> None:
        """dump -> load -> dump is stable, with the capacity inside and the package's provider string."""
        cap = AgentCapacity(max_concurrent=2, rpm=30, key="gpu", max_caller_retries=3)
        tool = CapacityAwareAgentTool(self._assistant(), cap, InMemoryLedger(), return_value_as_last_message=True)
        config = tool.dump_component()
        assert config.provider == "autogen_capacity.CapacityAwareAgentTool"
        assert config.config["capacity"]["max_concurrent"] == 2
        loaded = ComponentLoader.load_component(config, CapacityAwareAgentTool)
        assert isinstance(loaded, CapacityAwareAgentTool)
        assert loaded.capacity == cap
        assert loaded.dump_component() == config

    def test_team_tool_round_trip_keeps_the_contract(self) -> None:
        """The team tool's config carries its contract and the capacity-aware team's own config."""
        team = CapacityAwareGroupChat(
            [self._assistant("a"), self._assistant("b")],
            capacities={"a": AgentCapacity(max_concurrent=1)},
            max_turns=2,
            ledger=InMemoryLedger(),
        )
        cap = AgentCapacity(max_concurrent=1, backoff_initial_ms=10)
        tool = CapacityAwareTeamTool(team, "crew", "A crew.", cap, InMemoryLedger())
        config = tool.dump_component()
        assert config.provider == "autogen_capacity.CapacityAwareTeamTool"
        assert config.config["capacity"]["backoff_initial_ms"] == 10
        loaded = CapacityAwareTeamTool.load_component(config)
        assert loaded.capacity == cap
        assert loaded.dump_component() == config

    def test_a_tool_without_capacity_round_trips_with_none(self) -> None:
        """A tool that follows its agent's contract serializes ``capacity: None``."""
        config = CapacityAwareAgentTool(self._assistant(), ledger=InMemoryLedger()).dump_component()
        assert config.config.get("capacity") is None
        assert CapacityAwareAgentTool.load_component(config).dump_component() == config


class TestEndToEnd:
    async def test_assistant_calls_the_tool_through_a_throttled_target(self) -> None:
        """An AssistantAgent's function call runs the target under its contract, through one 429."""
        ledger = InMemoryLedger()
        writer = ScriptedAgent("writer", [RateLimitError(429, {"retry-after-ms": "1"})])
        tool = CapacityAwareAgentTool(writer, AgentCapacity(max_concurrent=1, **QUICK), ledger)
        client = ReplayChatCompletionClient(
            [
                CreateResult(
                    content=[FunctionCall(id="call-1", arguments='{"task": "write a poem"}', name="writer")],
                    finish_reason="function_calls",
                    usage=RequestUsage(prompt_tokens=0, completion_tokens=0),
                    cached=False,
                ),
                "The writer delivered.",
            ],
            model_info={
                "function_calling": True,
                "vision": False,
                "json_output": False,
                "family": "unknown",
                "structured_output": False,
            },
        )
        boss = AssistantAgent("boss", model_client=client, tools=[tool], reflect_on_tool_use=True)
        result = await asyncio.wait_for(boss.run(task="Get me a poem."), TIMEOUT)
        executions = [m for m in result.messages if isinstance(m, ToolCallExecutionEvent)]
        assert len(executions) == 1
        outcome = executions[0].content[0]
        assert (outcome.is_error, outcome.content) == (False, "writer: writer answer 2")
        assert writer.received == ["write a poem", "write a poem"]
        assert result.messages[-1].to_text() == "The writer delivered."
        assert await in_flight(ledger) == {}

    async def test_a_retried_assistant_sees_the_task_once(self) -> None:
        """After an overload the agent's state is restored, so the retry's model call sees the task once."""
        ledger = InMemoryLedger()
        client = FlakyReplayClient(["poem"], failures=[RateLimitError(429, {"retry-after-ms": "1"})])
        writer = AssistantAgent("writer", model_client=client, system_message="Write.")
        tool = CapacityAwareAgentTool(writer, AgentCapacity(max_concurrent=1, **QUICK), ledger)
        result = await asyncio.wait_for(tool.run(args("write a poem"), CancellationToken()), TIMEOUT)
        assert tool.return_value_as_string(result) == "writer: poem"
        assert [m.content for m in client.seen[-1]] == ["Write.", "write a poem"]
        assert await in_flight(ledger) == {}
