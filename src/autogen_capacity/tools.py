"""The caller side of the contract: AgentChat's ``AgentTool`` / ``TeamTool`` that follow the target's contract.

A capacity-aware tool takes a lease on its target's key before running it, waits by the target's backoff
schedule while the key is saturated, cools the key down and retries when the target answers with overload
(429, Retry-After, :class:`~autogen_capacity.Overloaded`), routes nothing more to a target whose
entitlement is exhausted, and gives up with :class:`~autogen_capacity.CapacityExhausted` once the
contracted retries are spent. Every other exception propagates unchanged.
"""

from __future__ import annotations

import random
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable

from autogen_agentchat.agents import BaseChatAgent
from autogen_agentchat.base import TaskResult
from autogen_agentchat.messages import BaseAgentEvent, BaseChatMessage
from autogen_agentchat.teams import BaseGroupChat
from autogen_agentchat.tools import AgentTool, TeamTool
from autogen_core import CancellationToken
from typing_extensions import Self

from ._compat import AgentToolConfig, TaskRunnerTool, TaskRunnerToolArgs, TeamToolConfig
from ._container import tokens_used
from ._contract_call import ContractCall
from ._hazards import warn_about_client_retries
from ._plan import DEFAULT_EXHAUSTED_TTL_S, UNBOUNDED
from ._team import CapacityAwareGroupChat
from ._turn_undo import checkpoint
from .contracts import AgentCapacity, declared_contract, ledger_key
from .ledger import CapacityLedger, default_ledger
from .overload import OverloadClassifier
from .priority import Priority

__all__ = [
    "CapacityAwareAgentTool",
    "CapacityAwareAgentToolConfig",
    "CapacityAwareTeamTool",
    "CapacityAwareTeamToolConfig",
]

_Item = BaseAgentEvent | BaseChatMessage | TaskResult


class CapacityAwareAgentToolConfig(AgentToolConfig):
    """:class:`~autogen_agentchat.tools.AgentToolConfig` plus the target's contract."""

    capacity: AgentCapacity | None = None
    """The contract the tool follows; ``None``: the agent's own ``capacity`` attribute, if any."""
    priority: Priority = "default"
    """The calls' class under overload: ``critical``, ``default`` or ``sheddable``."""


class CapacityAwareTeamToolConfig(TeamToolConfig):
    """:class:`~autogen_agentchat.tools.TeamToolConfig` plus the target's contract."""

    capacity: AgentCapacity | None = None
    """The contract the tool follows; ``None``: the team's own ``capacity`` (a CapacityAwareGroupChat's)."""
    priority: Priority = "default"
    """The calls' class under overload: ``critical``, ``default`` or ``sheddable``."""


class _Caller:
    """Runs a target under its contract (one per tool): its agent's turn is undone before a retry."""

    __slots__ = ("_agent", "call", "capacity")

    def __init__(
        self,
        target: BaseChatAgent | BaseGroupChat,
        capacity: AgentCapacity | None,
        ledger: CapacityLedger | None,
        classify: OverloadClassifier | None,
        exhausted_ttl_s: float,
        rng: random.Random | None,
        priority: Priority,
    ) -> None:
        self.capacity = capacity
        contract = capacity or declared_contract(target) or UNBOUNDED
        key = ledger_key(contract, target.name)
        # A capacity-aware team that declares a contract leases its own key on every run: a second lease on
        # the same key here would deadlock at max_concurrent=1 (design I4), so the team enforces it alone.
        leases = not (
            isinstance(target, CapacityAwareGroupChat) and target.declared_capacity is not None and target.key == key
        )
        self.call: ContractCall[_Item] = ContractCall(
            target.name,
            key,
            contract,
            leases=leases,
            tokens_of=_result_tokens,
            ledger=(lambda: ledger) if ledger is not None else default_ledger,
            classify=classify,
            exhausted_ttl_s=exhausted_ttl_s,
            rng=rng,
            priority=priority,
            event=("autogen_capacity.tool_overloaded", "tool"),
        )
        # An agent's state is restored before a retry (a team's run handles its members' overloads itself).
        self._agent = target if isinstance(target, BaseChatAgent) else None

    def stream(
        self, start: Callable[[], AsyncGenerator[_Item, None]], token: CancellationToken
    ) -> AsyncGenerator[_Item, None]:
        """Run ``start()`` under the contract (:meth:`ContractCall.stream`); the failed attempt of an agent is
        undone before the retry, so the retry does not show the model the task twice."""
        return self.call.stream(start, token, before_attempt=self._checkpoint if self._agent is not None else None)

    async def _checkpoint(self) -> Callable[[], Awaitable[None]]:
        assert self._agent is not None
        return (await checkpoint(self._agent)).restore


def _result_tokens(item: _Item) -> int | None:
    return tokens_used(item.messages) if isinstance(item, TaskResult) else None


async def _final(stream: AsyncIterator[_Item]) -> TaskResult:
    result: TaskResult | None = None
    async for item in stream:
        if isinstance(item, TaskResult):
            result = item
    if result is None:  # pragma: no cover  (AgentChat's run_stream always ends with a TaskResult)
        raise RuntimeError("The task runner did not produce a final TaskResult.")
    return result


class _ContractTool(TaskRunnerTool):
    """What both capacity-aware tools share: the contract, its key, and running under it."""

    _caller: _Caller

    @property
    def capacity(self) -> AgentCapacity:
        """The contract this tool follows."""
        return self._caller.call.contract

    @property
    def key(self) -> str:
        """The ledger key the tool leases."""
        return self._caller.call.key

    async def run(self, args: TaskRunnerToolArgs, cancellation_token: CancellationToken) -> TaskResult:
        """Run the task under the contract and return the result."""
        return await _final(self.run_stream(args, cancellation_token))

    async def run_stream(
        self, args: TaskRunnerToolArgs, cancellation_token: CancellationToken
    ) -> AsyncGenerator[_Item, None]:
        """Run the task under the contract, yielding its events; an attempt that failed with overload is
        retried whole, so its events may be followed by the retry's."""

        def start() -> AsyncGenerator[_Item, None]:
            return TaskRunnerTool.run_stream(self, args, cancellation_token)

        async for item in self._caller.stream(start, cancellation_token):
            yield item


class CapacityAwareAgentTool(_ContractTool, AgentTool):
    """An :class:`~autogen_agentchat.tools.AgentTool` that follows the agent's capacity contract.

    Each call takes a lease on the agent's key (``capacity.key`` or the agent's name) in the ledger, waiting
    by the contract's backoff schedule while the key is saturated, and releases it when the agent answers or
    fails. When the agent fails with overload (as ``overload_classifier`` sees it), the key cools down for
    the provider's Retry-After or the schedule's next delay and the call is retried, at most
    ``max_caller_retries`` times; a spent quota marks the key exhausted and is never retried. Ordinary
    exceptions propagate unchanged. As with AgentTool, the agent keeps its own state between calls; an
    attempt that failed with overload is undone first (the agent's saved state is loaded back), so the
    retry does not show the model the task twice.

    Args:
        agent: The agent the tool runs.
        capacity: The contract to follow; ``None``: the agent's own ``capacity`` attribute when it holds an
            :class:`~autogen_capacity.AgentCapacity`, else no limits with the default backoff schedule.
        ledger: Where leases and cooldowns are recorded; :func:`~autogen_capacity.default_ledger` when
            ``None``. Not serialized.
        return_value_as_last_message: As in AgentTool.
        overload_classifier: Decides which errors are overload; :func:`~autogen_capacity.classify_overload`
            by default. Not serialized.
        exhausted_ttl_s: How long a key whose quota is exhausted refuses every caller sharing the ledger.
        rng: The random source of the backoff jitter (for reproducible tests). Not serialized.
        priority: The calls' class under overload (``"critical"``, ``"default"``, ``"sheddable"``), as a team's.

    Raises:
        CapacityExhausted: (from calls) the agent stayed saturated or overloaded past the contract, or its
            entitlement is exhausted.

    .. versionadded:: 0.1.0
    """

    component_config_schema = CapacityAwareAgentToolConfig
    component_provider_override = "autogen_capacity.CapacityAwareAgentTool"

    def __init__(
        self,
        agent: BaseChatAgent,
        capacity: AgentCapacity | None = None,
        ledger: CapacityLedger | None = None,
        return_value_as_last_message: bool = False,
        *,
        overload_classifier: OverloadClassifier | None = None,
        exhausted_ttl_s: float = DEFAULT_EXHAUSTED_TTL_S,
        rng: random.Random | None = None,
        priority: Priority = "default",
    ) -> None:
        super().__init__(agent, return_value_as_last_message=return_value_as_last_message)
        self._caller = _Caller(agent, capacity, ledger, overload_classifier, exhausted_ttl_s, rng, priority)
        warn_about_client_retries([agent])

    def _to_config(self) -> CapacityAwareAgentToolConfig:
        return CapacityAwareAgentToolConfig(
            agent=self._agent.dump_component(),
            return_value_as_last_message=self._return_value_as_last_message,
            capacity=self._caller.capacity,
            priority=self._caller.call.priority,
        )

    @classmethod
    def _from_config(cls, config: AgentToolConfig) -> Self:
        ours = config if isinstance(config, CapacityAwareAgentToolConfig) else None
        return cls(
            BaseChatAgent.load_component(config.agent),
            ours.capacity if ours is not None else None,
            return_value_as_last_message=config.return_value_as_last_message,
            priority=ours.priority if ours is not None else "default",
        )


class CapacityAwareTeamTool(_ContractTool, TeamTool):
    """A :class:`~autogen_agentchat.tools.TeamTool` that follows the team's capacity contract.

    Behaves like :class:`CapacityAwareAgentTool`. Its contract defaults to the team's own ``capacity`` (a
    :class:`~autogen_capacity.CapacityAwareGroupChat` exposes the aggregate of its members); the key is
    ``capacity.key`` or the team's name. A CapacityAwareGroupChat that declares its own contract already
    leases that key on every run, so the tool does not lease it a second time (no self-deadlock), and
    waits and gives up as the team does.

    Args:
        team: The team the tool runs.
        name: The tool's name.
        description: The tool's description.
        capacity: The contract to follow; ``None``: the team's own ``capacity``, else no limits.
        ledger: As in :class:`CapacityAwareAgentTool`. Not serialized.
        return_value_as_last_message: As in TeamTool.
        overload_classifier, exhausted_ttl_s, rng, priority: As in :class:`CapacityAwareAgentTool`.

    .. versionadded:: 0.1.0
    """

    component_config_schema = CapacityAwareTeamToolConfig
    component_provider_override = "autogen_capacity.CapacityAwareTeamTool"

    def __init__(
        self,
        team: BaseGroupChat,
        name: str,
        description: str,
        capacity: AgentCapacity | None = None,
        ledger: CapacityLedger | None = None,
        return_value_as_last_message: bool = False,
        *,
        overload_classifier: OverloadClassifier | None = None,
        exhausted_ttl_s: float = DEFAULT_EXHAUSTED_TTL_S,
        rng: random.Random | None = None,
        priority: Priority = "default",
    ) -> None:
        super().__init__(team, name, description, return_value_as_last_message=return_value_as_last_message)
        self._caller = _Caller(team, capacity, ledger, overload_classifier, exhausted_ttl_s, rng, priority)

    def _to_config(self) -> CapacityAwareTeamToolConfig:
        return CapacityAwareTeamToolConfig(
            name=self._name,
            description=self._description,
            team=self._team.dump_component(),
            return_value_as_last_message=self._return_value_as_last_message,
            capacity=self._caller.capacity,
            priority=self._caller.call.priority,
        )

    @classmethod
    def _from_config(cls, config: TeamToolConfig) -> Self:
        ours = config if isinstance(config, CapacityAwareTeamToolConfig) else None
        return cls(
            BaseGroupChat.load_component(config.team),
            config.name,
            config.description,
            ours.capacity if ours is not None else None,
            return_value_as_last_message=config.return_value_as_last_message,
            priority=ours.priority if ours is not None else "default",
        )
