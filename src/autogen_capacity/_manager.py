"""The group chat manager: each turn, candidates -> preference order -> capacity filter -> atomic lease."""

from __future__ import annotations

import asyncio
import re
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from autogen_agentchat.base import TerminationCondition
from autogen_agentchat.messages import BaseAgentEvent, BaseChatMessage, MessageFactory, StopMessage
from autogen_agentchat.state import SelectorManagerState
from autogen_core import CancellationToken, DefaultTopicId, MessageContext, event, rpc
from autogen_core.model_context import ChatCompletionContext
from autogen_core.models import ChatCompletionClient
from pydantic import Field

from . import telemetry
from ._compat import (
    CandidateFuncType,
    GroupChatAgentResponse,
    GroupChatMessage,
    GroupChatRequestPublish,
    GroupChatStart,
    GroupChatTeamResponse,
    GroupChatTermination,
    RoundRobinGroupChatManager,
    SelectorFuncType,
    SelectorGroupChatManager,
    SerializableException,
    selector_candidates,
    selector_func_speaker,
)
from ._container import GroupChatMemberOverloaded
from ._engine import Admission, Candidate
from ._logging import logger
from ._turn_reports import TurnReports
from ._turns import TeamPolicy
from .admission import admit_one
from .events import CapacityExhaustedEvent, MemberOverloadedEvent
from .exceptions import CapacityExhausted, LedgerUnavailable
from .ledger import KeyStatus
from .routing import rank_by_headroom, rotation

__all__ = ["CapacityAwareGroupChatManager", "CapacityAwareManagerState"]

TERMINATION_POLL_S = 0.25
"""Longest a wait goes without re-checking the termination condition (ExternalTermination sends no signal)."""


class CapacityAwareManagerState(SelectorManagerState):
    """State of :class:`CapacityAwareGroupChatManager`: the selector's state plus the rotation."""

    next_speaker_index: int = Field(default=0)
    type: str = Field(default="CapacityAwareManagerState")


class _WhileSelecting:
    """Cancels the task that selects a speaker, while it does: attached once to a run's token (a token keeps
    its callbacks until it dies)."""

    __slots__ = ("task",)

    def __init__(self) -> None:
        self.task: asyncio.Task[Any] | None = None

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()


class _Exhausted(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason if reason.startswith("Capacity exhausted") else f"Capacity exhausted: {reason}"
        self.retry_after = retry_after


class CapacityAwareGroupChatManager(SelectorGroupChatManager, RoundRobinGroupChatManager):
    """Routes each turn to a participant with headroom, defers the others (with an event), waits by the
    preferred candidate's contract when nobody has headroom, and reroutes turns that fail with overload.

    With no contracts it makes the same choices as RoundRobinGroupChat (``headroom``/``round_robin``
    routing) or SelectorGroupChat (``selector`` routing). It is an instance of both of their managers, so
    code written for AutoGen's teams that fetches the manager as either one (and reads ``_current_turn``,
    ``_next_speaker_index``, ``_previous_speaker``, ``_message_thread``) recognises it: an identity only,
    Selector's methods win in the method order and this class overrides what both define.
    """

    def __init__(
        self,
        name: str,
        group_topic_type: str,
        output_topic_type: str,
        participant_topic_types: list[str],
        participant_names: list[str],
        participant_descriptions: list[str],
        output_message_queue: asyncio.Queue[BaseAgentEvent | BaseChatMessage | GroupChatTermination],
        termination_condition: TerminationCondition | None,
        max_turns: int | None,
        message_factory: MessageFactory,
        *,
        policy: TeamPolicy,
        model_client: ChatCompletionClient | None,
        selector_prompt: str,
        allow_repeated_speaker: bool,
        selector_func: SelectorFuncType | None,
        max_selector_attempts: int,
        candidate_func: CandidateFuncType | None,
        emit_team_events: bool,
        model_context: ChatCompletionContext | None,
        model_client_streaming: bool,
    ) -> None:
        super().__init__(
            name,
            group_topic_type,
            output_topic_type,
            participant_topic_types,
            participant_names,
            participant_descriptions,
            output_message_queue,
            termination_condition,
            max_turns,
            message_factory,
            cast(ChatCompletionClient, model_client),  # only read with selector routing, which requires one
            selector_prompt,
            allow_repeated_speaker,
            selector_func,
            max_selector_attempts,
            candidate_func,
            emit_team_events,
            model_context,
            model_client_streaming,
        )
        self._sequential_message_types = [*self._sequential_message_types, GroupChatMemberOverloaded]
        self._policy = policy
        self._reports = TurnReports(policy.team_name, policy.plans, self._emit, emit_team_events)
        self._team_name = policy.team_name
        self._plans = policy.plans
        self._ledger = policy.ledger
        self._turns = policy.turns
        self._admission = Admission(
            self._ledger,
            observer=self._reports,
            spend_retry=self._spend_retry,
            should_stop=self._should_stop if termination_condition is not None else None,
            poll_s=TERMINATION_POLL_S,
            team=policy.team_name,
            priority=policy.priority,
        )
        self._as_candidates = {
            name: (plan.candidate(cooled=False), plan.candidate(cooled=True)) for name, plan in self._plans.items()
        }
        self._next_speaker_index = 0
        self._cooled: set[str] = set()
        self._routed_around: set[str] = set()
        self._retries = 0
        self._turns_this_run = 0
        self._run_token: weakref.ref[CancellationToken] | None = None
        """The token of the run started last (weakly: it goes with its run); a member's message under another token
        is an earlier run's."""
        self._selecting = _WhileSelecting()
        """The run's one canceller of speaker selection, attached to its token when it starts."""

    # ----------------------------------------------------------------- lifecycle and state

    async def reset(self) -> None:
        await super().reset()
        self._next_speaker_index = 0
        self._forget_run()

    def _forget_run(self) -> None:
        self._turns.forget_run()
        self._routed_around.clear()
        self._retries = 0
        self._turns_this_run = 0

    async def save_state(self) -> Mapping[str, Any]:
        state = CapacityAwareManagerState(
            message_thread=[message.dump() for message in self._message_thread],
            current_turn=self._current_turn,
            previous_speaker=self._previous_speaker,
            next_speaker_index=self._next_speaker_index,
        )
        return state.model_dump()

    async def load_state(self, state: Mapping[str, Any]) -> None:
        loaded = CapacityAwareManagerState.model_validate(state)
        await super().load_state(loaded.model_dump())
        self._next_speaker_index = loaded.next_speaker_index

    async def update_message_thread(self, messages: Sequence[BaseAgentEvent | BaseChatMessage]) -> None:
        if self._policy.routing == "selector":
            await super().update_message_thread(messages)
        else:  # the model context only feeds the selector prompt
            self._message_thread.extend(messages)

    async def validate_group_state(self, messages: list[BaseChatMessage] | None) -> None:
        self._forget_run()
        self._active_speakers.clear()  # a run starts with nobody speaking (an earlier run's request may be undelivered)

    # ----------------------------------------------------------------- runs and responses

    # AutoGen types a handler by its class, so mypy sees an override; this one replaces the base handler.
    @rpc
    async def handle_start(self, message: GroupChatStart, ctx: MessageContext) -> None:  # type: ignore[override]
        """Start a run as AutoGen does, remembering its token and attaching the run's selection canceller to it."""
        token = ctx.cancellation_token
        self._run_token, self._selecting = weakref.ref(token), _WhileSelecting()
        token.add_callback(self._selecting.cancel)
        await SelectorGroupChatManager.handle_start(self, message, ctx)

    def _of_an_earlier_run(self, ctx: MessageContext) -> bool:
        """A member's message sent under an earlier run's token: a shared runtime delivers what a run left behind
        (the answer of a turn its cancellation did not stop) to whatever run comes next. AutoGen's own teams take it
        as the next run's."""
        current = self._run_token() if self._run_token is not None else None
        return current is not None and ctx.cancellation_token is not current

    # AutoGen types a handler by its class, so mypy sees an override; this one replaces the base handler.
    @event
    async def handle_agent_response(  # type: ignore[override]
        self, message: GroupChatAgentResponse | GroupChatTeamResponse, ctx: MessageContext
    ) -> None:
        """Count the turn (its container recorded its tokens and released its lease), then continue as AutoGen
        does. The answer of an earlier run's turn is not this run's."""
        if self._of_an_earlier_run(ctx):
            return
        self._turns_this_run += 1
        await SelectorGroupChatManager.handle_agent_response(self, message, ctx)

    @event
    async def handle_member_overloaded(self, message: GroupChatMemberOverloaded, ctx: MessageContext) -> None:
        """A member's turn failed with overload: cool it down (or route around it) and reroute the turn (unless the
        turn was an earlier run's: its container recorded the overload in the ledger already)."""
        if self._of_an_earlier_run(ctx):
            return
        try:
            self._active_speakers.remove(message.name)  # its container recorded the overload and released its lease
            plan = self._plans[message.name]
            out_for = message.out_for_s
            if message.kind == "exhausted" or message.given_up:
                self._routed_around.add(message.name)
            if message.kind == "throttled":
                self._cooled.add(message.name)
            logger.warning(
                "autogen_capacity.member_overloaded",
                team=self._team_name,
                member=message.name,
                key=plan.key,
                kind=message.kind,
                out_for_s=round(out_for, 3),
                given_up=message.given_up,
                error=message.error.error_message,
            )
            await self._emit(
                lambda: MemberOverloadedEvent(
                    content=f"{message.error.error_type}: {message.error.error_message}",
                    member=message.name,
                    key=plan.key,
                    kind=message.kind,
                    cooldown_s=out_for,
                    source=self._team_name,
                )
            )
            if not self._spend_retry():
                await self._stop_exhausted(_Exhausted(f"the team's retry budget is spent ({self._retries} retries)"))
                return
            await self._transition_to_next_speakers(ctx.cancellation_token)
        except Exception as e:
            await self._signal_termination_with_error(SerializableException.from_exception(e))
            raise

    # ----------------------------------------------------------------- selection

    async def _transition_to_next_speakers(self, cancellation_token: CancellationToken) -> None:
        # As in AutoGen, a cancelled run selects nobody: the token cancels this handler while it selects (in this
        # task rather than a new one, so that a woken wait goes on at once).
        if cancellation_token.is_cancelled():
            raise asyncio.CancelledError
        if self._turns.live_changes:  # what the last answers taught, before the next speaker is admitted by it
            await self._reports.live_limits_changed(self._turns.take_live_changes())
        selecting = self._selecting
        selecting.task = asyncio.current_task()
        try:
            try:
                speaker = await self._admit_next_speaker()
            finally:
                selecting.task = None
        except _Exhausted as exhausted:
            if cancellation_token.is_cancelled():
                raise asyncio.CancelledError from None
            await self._stop_exhausted(exhausted)
            return
        except LedgerUnavailable as error:  # the base handler ends the run; the team raises it typed
            self._turns.ledger_failed(error)
            raise
        if cancellation_token.is_cancelled():  # by the selection itself (a selector_func), with no wait after it
            if speaker is not None:
                await self._turns.release(speaker)
            raise asyncio.CancelledError
        if speaker is None:  # the termination condition fired while waiting; already signalled
            return
        await self._log_speaker_selection([speaker])
        await self.publish_message(
            GroupChatRequestPublish(),
            topic_id=DefaultTopicId(type=self._participant_name_to_topic_type[speaker]),
            cancellation_token=cancellation_token,
        )
        self._active_speakers.append(speaker)

    async def _admit_next_speaker(self) -> str | None:
        """Lease the first candidate in preference order that has headroom; wait by contract when none has.

        Returns the speaker, or ``None`` when the termination condition fired while waiting.

        Raises:
            _Exhausted: nobody could be admitted within the contract (or the retry budget).
        """
        thread = self._message_thread
        explicit = await self._explicit_speaker(thread)
        names = [explicit] if explicit is not None else await self._candidates(thread)
        fixed = explicit is not None or self._policy.routing == "round_robin"  # an order no status changes
        by_headroom = not fixed and self._policy.routing == "headroom"  # the rotation breaks its ties
        if (fixed or by_headroom) and len(names) > 1:
            allowed = set(names)
            names = [name for name in rotation(self._participant_names, self._next_speaker_index) if name in allowed]
        as_candidates, cooled = self._as_candidates, self._cooled
        candidates = [as_candidates[name][name in cooled] for name in names]  # self._candidate, inlined: per member
        try:
            admitted = await self._admission.admit(
                candidates,
                order=None if fixed else self._order,
                routed_around=frozenset(self._routed_around),
                deadline=self._turns.deadline,
                first_if_idle=by_headroom,
            )
        except CapacityExhausted as exhausted:
            raise _Exhausted(str(exhausted), exhausted.retry_after) from exhausted
        if admitted is None:
            return None
        name = admitted.candidate.name
        if admitted.lease is not None:
            self._turns.hold(name, admitted.lease)
        self._next_speaker_index = self._participant_names.index(name) + 1
        if explicit is None:
            self._previous_speaker = name
        return name

    def _candidate(self, name: str) -> Candidate:
        """How the engine sees ``name`` now (built once per member; a member cooled down is checked from then on)."""
        return self._as_candidates[name][name in self._cooled]

    async def _should_stop(self) -> bool:
        """Whether the termination condition fired while waiting (ExternalTermination sends no signal)."""
        return await self._apply_termination_condition([])

    async def _explicit_speaker(self, thread: Sequence[BaseAgentEvent | BaseChatMessage]) -> str | None:
        """The speaker named by ``selector_func``, which is waited for rather than replaced."""
        return await selector_func_speaker(self, thread)

    async def _candidates(self, thread: Sequence[BaseAgentEvent | BaseChatMessage]) -> list[str]:
        """The candidates, as SelectorGroupChat builds them."""
        return await selector_candidates(self, thread)

    async def _order(self, open_: list[Candidate], statuses: Mapping[str, KeyStatus]) -> list[Candidate]:
        """Candidates with headroom in preference order: rotation, headroom rank, or the selector's pick first."""
        allowed = {candidate.name: candidate for candidate in open_}
        ordered = [name for name in rotation(self._participant_names, self._next_speaker_index) if name in allowed]
        if self._policy.routing == "headroom":
            ordered = rank_by_headroom(ordered, {name: statuses[name].headroom for name in ordered})
        elif self._policy.routing == "selector" and len(ordered) > 1:
            # The prompt lists candidates in participant order, exactly as SelectorGroupChat's does.
            chosen = await self._model_pick([name for name in self._participant_names if name in allowed])
            if chosen is None:
                return []
            ordered = [chosen, *(name for name in ordered if name != chosen)]
        # The selector may fall back to the previous speaker, which need not be a candidate.
        return [allowed.get(name) or self._candidate(name) for name in ordered]

    async def _model_pick(self, candidates: list[str]) -> str | None:
        """Ask the model client to pick among ``candidates`` (SelectorGroupChat's prompt, retries and
        fallbacks), under ``selector_capacity`` when declared."""
        roles = "\n".join(
            re.sub(r"\s+", " ", f"{name}: {description}").strip()
            for name, description in zip(self._participant_names, self._participant_descriptions, strict=True)
        )
        capacity = self._policy.selector_capacity
        if capacity is None:
            return await self._select_speaker(roles, candidates, self._max_selector_attempts)
        try:
            key = self._policy.selector_key
            lease = await admit_one(
                self._ledger,
                Candidate(key, key, capacity),
                priority=self._policy.priority,
                deadline=self._turns.deadline,
            )
        except CapacityExhausted as exhausted:
            raise _Exhausted(f"the selector's model client: {exhausted}", exhausted.retry_after) from exhausted
        assert lease is not None  # a leased candidate
        async with lease:
            return await self._select_speaker(roles, candidates, self._max_selector_attempts)

    def _spend_retry(self) -> bool:
        self._retries += 1
        budget = self._policy.retry_budget
        return budget is None or budget.allows(self._retries, self._turns_this_run)

    # ----------------------------------------------------------------- reporting

    async def _emit(self, make: Callable[[], BaseAgentEvent]) -> None:
        """Put the event ``make()`` builds in the run stream; it is built only when team events are emitted."""
        if self._emit_team_events:
            message = make()
            await self.publish_message(
                GroupChatMessage(message=message), topic_id=DefaultTopicId(type=self._output_topic_type)
            )
            await self._output_message_queue.put(message)

    async def _stop_exhausted(self, exhausted: _Exhausted) -> None:
        reason = exhausted.reason
        logger.warning("autogen_capacity.exhausted", team=self._team_name, reason=reason)
        telemetry.run_exhausted(self._team_name, self._team_name)
        await self._emit(lambda: CapacityExhaustedEvent(content=reason, source=self._team_name))
        if self._policy.on_exhausted == "raise":
            self._turns.pending_error = CapacityExhausted(
                reason, snapshot=await self._ledger.snapshot(), retry_after=exhausted.retry_after
            )
        if self._termination_condition is not None:
            await self._termination_condition.reset()
        self._current_turn = 0
        await self._signal_termination(StopMessage(content=reason, source=self._team_name))
