"""CapacityAwareGroupChat: a drop-in RoundRobinGroupChat / SelectorGroupChat that routes by capacity."""

from __future__ import annotations

import asyncio
import functools
import random
import sys
import weakref
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from typing import Any, Literal

from autogen_agentchat.base import ChatAgent, TaskResult, Team, TerminationCondition
from autogen_agentchat.messages import BaseAgentEvent, BaseChatMessage, MessageFactory
from autogen_agentchat.teams import BaseGroupChat, SelectorGroupChat
from autogen_core import AgentRuntime, CancellationToken, Component
from autogen_core.model_context import ChatCompletionContext
from autogen_core.models import ChatCompletionClient
from typing_extensions import Self

from . import telemetry
from ._compat import CandidateFuncType, SelectorFuncType
from ._config import CapacityArguments, CapacityAwareGroupChatConfig, load_team_config, team_config
from ._container import CapacityAwareAgentContainer, take_granted_lease, tokens_used
from ._engine import Candidate
from ._hazards import unrelayed_event_types, warn_about_client_retries
from ._manager import CapacityAwareGroupChatManager
from ._plan import DEFAULT_EXHAUSTED_TTL_S, aggregate_mode, plan_members, resolve_routing, team_status
from ._relay import relaying_factory
from ._turns import TeamPolicy, TurnKeeper
from .admission import admit_linked, settle
from .contracts import AgentCapacity, RetryBudget, ledger_key
from .deadlines import deadline_from
from .events import CAPACITY_EVENT_TYPES
from .exceptions import CapacityExhausted, LedgerUnavailable
from .ledger import CapacityLedger, KeyStatus, Lease, default_ledger
from .ledger.config import LedgerConfig, ledger_from_config
from .overload import OverloadClassifier, classify_overload
from .priority import Priority
from .routing import Routing

__all__ = ["DEFAULT_SELECTOR_PROMPT", "CapacityAwareGroupChat"]

DEFAULT_SELECTOR_PROMPT: str = (SelectorGroupChat.__init__.__kwdefaults__ or {})["selector_prompt"]
"""SelectorGroupChat's own default prompt, so selector routing asks the model exactly what it would."""


class CapacityAwareGroupChat(BaseGroupChat, Component[CapacityAwareGroupChatConfig]):
    """A group chat that routes each turn to members with headroom.

    A drop-in replacement for :class:`~autogen_agentchat.teams.RoundRobinGroupChat` and
    :class:`~autogen_agentchat.teams.SelectorGroupChat`: the same arguments, methods and component config,
    plus capacity contracts. With no contracts it behaves exactly like RoundRobinGroupChat (or, with a
    model client, like SelectorGroupChat).

    Each turn: candidates -> preference order (``routing``) -> capacity filter -> an atomic lease on the
    member's key, released once what the turn taught is recorded. Members at their limit are deferred (with an
    event); when nobody has headroom the team waits by contract (see ``docs/overload.md``) and, past it, ends
    with ``Capacity exhausted`` (or raises :class:`~autogen_capacity.CapacityExhausted`). A member that
    answers 429 is cooled down and its turn goes to another member.

    Args:
        participants: The agents and teams in the group chat; names must be unique.
        model_client: The model that picks speakers with ``routing="selector"`` (where SelectorGroupChat has it).
        name: The team's name (also its ledger key when it declares ``capacity``).
        description: The team's description.
        capacity: The team's own contract: enforced with one lease per run on ``capacity.key`` or the team's
            name, and capping :attr:`capacity`.
        capacities: Member contracts keyed by participant name; wins over a participant's ``capacity``
            attribute.
        routing: ``"headroom"`` (rank by headroom, ties by rotation), ``"round_robin"`` (rotation, saturated
            members deferred) or ``"selector"`` (the model picks among members with headroom). ``None``:
            ``"selector"`` with a model client, else ``"headroom"``.
        ledger: Where usage is recorded; :func:`~autogen_capacity.default_ledger` when ``None``. Serialized only
            as a :class:`~autogen_capacity.LedgerConfig` (a ledger built by
            :func:`~autogen_capacity.ledger_from_config`, or the default ledger), never as a URL.
        on_exhausted: ``"stop"`` ends the run with a ``Capacity exhausted`` stop reason; ``"raise"`` raises
            :class:`~autogen_capacity.CapacityExhausted` after the stream ends.
        retry_budget: A team-wide cap on retries (waits and rerouted overloads). ``None``: only each wait's
            ``max_caller_retries`` applies.
        selector_capacity: A contract for the selector's model client, leased around each selection call.
        overload_classifier: Decides which member errors are overload; :func:`~autogen_capacity.classify_overload`
            by default. Not serialized.
        exhausted_ttl_s: How long a member whose quota is exhausted is routed around by every team sharing
            the ledger.
        rng: The random source of the jitter in cooldowns the team picks itself (an overload with no provider
            hint); for reproducible tests. Not serialized.
        priority: The team's class under overload (``"critical"``, ``"default"``, ``"sheddable"``): a freed slot
            goes to the oldest waiter of the highest class present (a long wait ages up), and past a key's
            ``max_queue`` a sheddable waiter is dropped before a critical one is refused.
        deadline_s: Seconds a run may last; a ``TimeoutTermination`` in ``termination_condition`` sets one too
            (the smaller wins). The team never waits past it, never starts a turn the time left cannot cover,
            and ends at once (``Capacity exhausted``, ``retry_after`` = the expected wait) when its expected wait
            in line already exceeds it.
        selector_prompt, allow_repeated_speaker, max_selector_attempts, selector_func, candidate_func,
            model_client_streaming, model_context: As in SelectorGroupChat. ``allow_repeated_speaker=None``
            means True for headroom and round-robin routing, False for selector routing.
            ``selector_func`` and ``candidate_func`` are not serialized.
        termination_condition, max_turns, runtime, custom_message_types, emit_team_events: As in
            RoundRobinGroupChat. The capacity events are registered automatically.

    The capacity arguments are validated by the rules the component config uses (a contract may be a mapping).

    Raises:
        pydantic.ValidationError: A capacity argument the config would refuse (a ``ValueError``, naming the field).
        ConfigError: Routing and model client disagree. ``ValueError``: a participant name is duplicated.
        ContractError: ``capacities`` names no participant.

    Warns:
        CapacityConfigWarning: A member's model client retries by itself, or a participant's ``capacity``
            attribute is not an :class:`~autogen_capacity.AgentCapacity` (and is ignored).

    .. versionadded:: 0.1.0
    """

    component_config_schema = CapacityAwareGroupChatConfig
    component_provider_override = "autogen_capacity.CapacityAwareGroupChat"

    DEFAULT_NAME = "CapacityAwareGroupChat"
    DEFAULT_DESCRIPTION = "A team of agents that routes each turn to a member with headroom."

    _ledger_config: LedgerConfig | None = None
    """The config's ledger when the team was loaded with one: built (and shared) per event loop on use."""

    def __init__(
        self,
        participants: Sequence[ChatAgent | Team],
        model_client: ChatCompletionClient | None = None,
        *,
        name: str | None = None,
        description: str | None = None,
        capacity: AgentCapacity | None = None,
        capacities: Mapping[str, AgentCapacity] | None = None,
        routing: Routing | None = None,
        ledger: CapacityLedger | None = None,
        on_exhausted: Literal["stop", "raise"] = "stop",
        retry_budget: RetryBudget | None = None,
        selector_capacity: AgentCapacity | None = None,
        overload_classifier: OverloadClassifier | None = None,
        exhausted_ttl_s: float = DEFAULT_EXHAUSTED_TTL_S,
        rng: random.Random | None = None,
        selector_prompt: str = DEFAULT_SELECTOR_PROMPT,
        allow_repeated_speaker: bool | None = None,
        max_selector_attempts: int = 3,
        priority: Priority = "default",
        deadline_s: float | None = None,
        selector_func: SelectorFuncType | None = None,
        candidate_func: CandidateFuncType | None = None,
        model_client_streaming: bool = False,
        model_context: ChatCompletionContext | None = None,
        termination_condition: TerminationCondition | None = None,
        max_turns: int | None = None,
        runtime: AgentRuntime | None = None,
        custom_message_types: list[type[BaseAgentEvent | BaseChatMessage]] | None = None,
        emit_team_events: bool = False,
    ) -> None:
        # One set of rules for both paths: the config's own model validates the arguments (a mapping becomes an
        # AgentCapacity, a bad value is a ValidationError naming the field), before anything is built.
        arguments = CapacityArguments.model_validate(
            {
                "capacity": capacity,
                "capacities": capacities if capacities is not None else {},
                "routing": routing,
                "on_exhausted": on_exhausted,
                "retry_budget": retry_budget,
                "selector_capacity": selector_capacity,
                "exhausted_ttl_s": exhausted_ttl_s,
                "max_selector_attempts": max_selector_attempts,
                "priority": priority,
                "deadline_s": deadline_s,
            }
        )
        resolved = resolve_routing(arguments.routing, has_model_client=model_client is not None)
        message_types = list(custom_message_types or [])
        message_types += [t for t in CAPACITY_EVENT_TYPES if t not in message_types]
        super().__init__(
            name=name or self.DEFAULT_NAME,
            description=description or self.DEFAULT_DESCRIPTION,
            participants=list(participants),
            group_chat_manager_name="CapacityAwareGroupChatManager",
            group_chat_manager_class=CapacityAwareGroupChatManager,
            termination_condition=termination_condition,
            max_turns=max_turns,
            runtime=runtime,
            custom_message_types=message_types,
            emit_team_events=emit_team_events,
        )
        self._custom_message_types = custom_message_types
        self._declared_capacity = arguments.capacity
        self._capacities = arguments.capacities
        self._routing: Routing = resolved
        self._ledger_given = ledger
        self._on_exhausted: Literal["stop", "raise"] = arguments.on_exhausted
        self._retry_budget = arguments.retry_budget
        self._selector_capacity = arguments.selector_capacity
        self._classify = overload_classifier or classify_overload
        self._exhausted_ttl_s = arguments.exhausted_ttl_s
        self._model_client = model_client
        self._selector_prompt = selector_prompt
        self._allow_repeated_speaker = (
            allow_repeated_speaker if allow_repeated_speaker is not None else resolved != "selector"
        )
        self._max_selector_attempts = arguments.max_selector_attempts
        self._priority: Priority = arguments.priority
        self._deadline_s = arguments.deadline_s
        self._selector_func = selector_func
        self._candidate_func = candidate_func
        self._model_client_streaming = model_client_streaming
        self._model_context = model_context
        self._plans = plan_members(self._name, self._participants, self._capacities)
        self._turns = TurnKeeper(self._plans, arguments.exhausted_ttl_s, rng)
        warn_about_client_retries(self._participants)

    @property
    def declared_capacity(self) -> AgentCapacity | None:
        """The team's own declared contract (the ``capacity`` argument)."""
        return self._declared_capacity

    @property
    def key(self) -> str:
        """The ledger key of the team's own contract: ``capacity.key`` or the team's name."""
        return ledger_key(self._declared_capacity, self._name)

    @property
    def capacity(self) -> AgentCapacity | None:
        """The team's contract as a provider: its members' contracts aggregated (pool for headroom and
        selector routing, pipeline for round robin), capped field by field by the declared ``capacity``."""
        mode = aggregate_mode(self._routing)
        # Each contract under the key it is tracked by, so members on one backend count once even when one of
        # them names it through its participant name.
        contracts = [
            plan.contract.model_copy(update={"key": plan.key}) if plan.contract is not None else None
            for plan in self._plans.values()
        ]
        return AgentCapacity.aggregate(contracts, mode, cap=self._declared_capacity)

    def capacity_of(self, name: str) -> AgentCapacity | None:
        """A member's effective contract, or ``None`` when it declares none.

        Raises:
            KeyError: no participant has that name (the message names the participants).
        """
        plan = self._plans.get(name)
        if plan is None:
            raise KeyError(
                f"no participant named {name!r} in team {self._name!r} "
                f"(participants: {', '.join(map(repr, self._plans))})"
            )
        return plan.contract

    @property
    def ledger(self) -> CapacityLedger:
        """The ledger this team records usage in (the process-wide default unless one was given)."""
        if self._ledger_given is not None:
            return self._ledger_given
        return ledger_from_config(self._ledger_config) if self._ledger_config is not None else default_ledger()

    async def capacity_status(self) -> KeyStatus:
        """The team's live status as a participant of a parent team: its own key's (a parent waits for that key
        and takes its one lease), with the headroom capped by its members' (the best member for a pool, the
        worst for a pipeline). Saturated members lower the headroom but do not block: the team waits for them
        itself, by its own contract."""
        return await team_status(self.ledger, self.key, self._declared_capacity, self._plans, self._routing)

    # ----------------------------------------------------------------- running

    async def run_stream(
        self,
        *,
        task: str | BaseChatMessage | Sequence[BaseChatMessage] | None = None,
        cancellation_token: CancellationToken | None = None,
        output_task_messages: bool = True,
    ) -> AsyncGenerator[BaseAgentEvent | BaseChatMessage | TaskResult, None]:
        """Run the team as :meth:`BaseGroupChat.run_stream` does, under the team's own contract (one lease
        per run when ``capacity`` is declared). Every lease the run took is released when it ends."""
        unrelayed = unrelayed_event_types(self._name, self._emit_team_events, relaying_factory(sys._getframe(1)))
        if self._is_running:
            raise ValueError("The team is already running, it cannot run again until it is stopped.")
        self._turns.pending_error = None
        limit = deadline_from(self._termination_condition, deadline_s=self._deadline_s)
        self._turns.deadline = asyncio.get_running_loop().time() + limit if limit is not None else None
        own_lease = None
        result: TaskResult | None = None
        cancellation_token = _for_one_run(cancellation_token)
        try:
            if self._declared_capacity is not None:
                try:
                    own_lease = await self._own_lease(cancellation_token)
                except CapacityExhausted as exhausted:
                    telemetry.run_exhausted(self.name, self.key)
                    if self._on_exhausted == "raise":
                        raise
                    yield TaskResult(messages=[], stop_reason=str(exhausted))
                    return
            try:
                async for item in super().run_stream(
                    task=task, cancellation_token=cancellation_token, output_task_messages=output_task_messages
                ):
                    if isinstance(item, TaskResult):
                        result = item
                    elif not isinstance(item, unrelayed):  # the manager has logged those already
                        yield item
            except RuntimeError as reported:  # AutoGen's report of an error in a handler
                failed, self._turns.pending_error = self._turns.pending_error, None
                if isinstance(failed, LedgerUnavailable):
                    raise failed from reported
                raise
            if own_lease is not None and result is not None and self._declared_capacity is not None:
                await settle(own_lease, self.ledger, self.key, self._declared_capacity, tokens_used(result.messages))
        finally:
            # A shared runtime still delivers what the run published (a member's request) after the run ended
            # however it ended: the token tells those handlers the run is over before its leases are freed.
            cancellation_token.cancel()
            await self._turns.release_all()
            if own_lease is not None:
                await own_lease.release()
        error, self._turns.pending_error = self._turns.pending_error, None
        if error is not None:
            raise error
        if result is not None:
            yield result

    async def _own_lease(self, cancellation_token: CancellationToken | None) -> Lease:
        """The run's lease on the team's own key: the one its parent took for this turn, else a new one."""
        assert self._declared_capacity is not None
        granted = take_granted_lease(self.key)
        if granted is not None:
            return granted
        own = Candidate(self.key, self.key, self._declared_capacity)
        lease = await admit_linked(
            self.ledger, own, cancellation_token, priority=self._priority, deadline=self._turns.deadline
        )
        assert lease is not None
        return lease

    async def reset(self) -> None:
        """Reset the team and its participants, releasing any lease a stopped run left behind."""
        await super().reset()  # refuses a running team before anything is released
        await self._turns.release_all()

    # ----------------------------------------------------------------- wiring into BaseGroupChat

    def _create_group_chat_manager_factory(
        self, *base: Any, **named: Any
    ) -> Callable[[], CapacityAwareGroupChatManager]:
        """The manager, built with BaseGroupChat's arguments (``base``/``named``, as AutoGen passes them) and the
        team's own (its policy is read when the runtime builds the manager, on the running loop)."""

        def _factory() -> CapacityAwareGroupChatManager:
            return CapacityAwareGroupChatManager(
                *base,
                **named,
                policy=self._policy(),
                model_client=self._model_client,
                selector_prompt=self._selector_prompt,
                allow_repeated_speaker=self._allow_repeated_speaker,
                selector_func=self._selector_func,
                max_selector_attempts=self._max_selector_attempts,
                candidate_func=self._candidate_func,
                emit_team_events=self._emit_team_events,
                model_context=self._model_context,
                model_client_streaming=self._model_client_streaming,
            )

        return _factory

    def _policy(self) -> TeamPolicy:
        ledger = self._turns.ledger = self.ledger
        return TeamPolicy(
            team_name=self._name,
            plans=self._plans,
            routing=self._routing,
            ledger=ledger,
            turns=self._turns,
            on_exhausted=self._on_exhausted,
            retry_budget=self._retry_budget,
            selector_capacity=self._selector_capacity,
            selector_key=ledger_key(self._selector_capacity, f"{self._name}.selector"),
            priority=self._priority,
        )

    def _create_participant_factory(
        self, parent_topic_type: str, output_topic_type: str, agent: ChatAgent | Team, message_factory: MessageFactory
    ) -> Callable[[], CapacityAwareAgentContainer]:
        manager_topic_type = self._group_chat_manager_topic_type
        return functools.partial(
            CapacityAwareAgentContainer,
            *(parent_topic_type, output_topic_type, manager_topic_type, agent, message_factory),
            self._classify,
            self._turns,
        )

    def _to_config(self) -> CapacityAwareGroupChatConfig:
        return team_config(self, DEFAULT_SELECTOR_PROMPT)

    @classmethod
    def _from_config(cls, config: CapacityAwareGroupChatConfig) -> Self:
        if config.ledger is not None:
            config.ledger.check()  # an unset URL variable fails the load, not the first run
        team = cls(**load_team_config(config, DEFAULT_SELECTOR_PROMPT))
        team._ledger_config = config.ledger
        return team


def _for_one_run(token: CancellationToken | None) -> CancellationToken:
    """A token for one run, cancelled with the caller's ``token`` (if any) and when the run ends. AutoGen links a
    future to the run's token on every turn and a token keeps what is linked to it while it lives; the caller's
    token, which may outlive many runs, keeps one small callback per run instead."""
    run_token = CancellationToken()
    if token is None:
        return run_token
    cancel_run = weakref.WeakMethod(run_token.cancel)

    def cancel() -> None:
        method = cancel_run()
        if method is not None:
            method()

    token.add_callback(cancel)
    return run_token
