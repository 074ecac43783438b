"""The group chat manager: each turn, candidates -> preference order -> capacity filter -> atomic lease."""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from autogen_agentchat.base import TerminationCondition
from autogen_agentchat.messages import BaseAgentEvent, BaseChatMessage, MessageFactory, StopMessage
from autogen_agentchat.state import SelectorManagerState
from autogen_agentchat.teams._group_chat._events import (
    GroupChatAgentResponse,
    GroupChatMessage,
    GroupChatRequestPublish,
    GroupChatTeamResponse,
    GroupChatTermination,
    SerializableException,
)
from autogen_agentchat.teams._group_chat._selector_group_chat import (
    AsyncCandidateFunc,
    AsyncSelectorFunc,
    CandidateFuncType,
    SelectorFuncType,
    SelectorGroupChatManager,
    SyncCandidateFunc,
    SyncSelectorFunc,
)
from autogen_core import CancellationToken, DefaultTopicId, MessageContext, event
from autogen_core.model_context import ChatCompletionContext
from autogen_core.models import ChatCompletionClient
from pydantic import Field

from ._container import GroupChatMemberOverloaded
from ._logging import logger
from ._members import IDLE, TeamPolicy
from ._turn_reports import TurnReports, describe
from .admission import acquire
from .contracts import AgentCapacity
from .events import CapacityExhaustedEvent, MemberOverloadedEvent
from .exceptions import CapacityExhausted, QueueFull
from .ledger import KeyStatus
from .routing import rank_by_headroom, rotation

__all__ = ["CapacityAwareGroupChatManager", "CapacityAwareManagerState"]

TERMINATION_POLL_S = 0.25
"""Longest a wait goes without re-checking the termination condition (ExternalTermination sends no signal)."""

_rng = random.Random()


class CapacityAwareManagerState(SelectorManagerState):
    """State of :class:`CapacityAwareGroupChatManager`: the selector's state plus the rotation."""

    next_speaker_index: int = Field(default=0)
    type: str = Field(default="CapacityAwareManagerState")


class _WhileSelecting:
    """Cancels the task that selects a speaker, while it does (a token's callbacks cannot be removed)."""

    __slots__ = ("task",)

    def __init__(self) -> None:
        self.task: asyncio.Task[Any] | None = asyncio.current_task()

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()


class _Exhausted(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class CapacityAwareGroupChatManager(SelectorGroupChatManager):
    """Routes each turn to a participant with headroom, defers the others (with an event), waits by the
    preferred candidate's contract when nobody has headroom, and reroutes turns that fail with overload.

    With no contracts it makes the same choices as RoundRobinGroupChat (``headroom``/``round_robin``
    routing) or SelectorGroupChat (``selector`` routing).
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
        self._next_speaker_index = 0
        self._overloads: dict[str, int] = {}
        self._cooled: set[str] = set()
        self._routed_around: set[str] = set()
        self._retries = 0
        self._turns_this_run = 0

    # ----------------------------------------------------------------- lifecycle and state

    async def reset(self) -> None:
        await super().reset()
        self._next_speaker_index = 0
        self._forget_run()

    def _forget_run(self) -> None:
        self._overloads.clear()
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

    # ----------------------------------------------------------------- responses

    # AutoGen types a handler by its class, so mypy sees an override; this one replaces the base handler.
    @event
    async def handle_agent_response(  # type: ignore[override]
        self, message: GroupChatAgentResponse | GroupChatTeamResponse, ctx: MessageContext
    ) -> None:
        """Debit the speaker's tokens (its container released its lease already), then continue as AutoGen does."""
        plan = self._plans[message.name]
        if plan.contract is not None and plan.contract.tpm is not None:
            await self._ledger.record_tokens(plan.key, _tokens_used(message))
        self._overloads.pop(message.name, None)
        self._turns_this_run += 1
        await SelectorGroupChatManager.handle_agent_response(self, message, ctx)

    @event
    async def handle_member_overloaded(self, message: GroupChatMemberOverloaded, ctx: MessageContext) -> None:
        """A member's turn failed with overload: cool it down (or route around it) and reroute the turn."""
        try:
            self._active_speakers.remove(message.name)  # its container released its lease already
            plan = self._plans[message.name]
            if message.kind == "exhausted":
                out_for = self._policy.exhausted_ttl_s
                self._routed_around.add(message.name)
                await self._ledger.mark_exhausted(plan.key, out_for)
            else:
                count = self._overloads[message.name] = self._overloads.get(message.name, 0) + 1
                hinted = message.retry_after_s
                out_for = hinted if hinted is not None else plan.schedule.jittered_delay(count, _rng)
                self._cooled.add(message.name)
                await self._ledger.cooldown(plan.key, out_for)
                if count > plan.schedule.max_caller_retries:
                    # Overloaded on every retry its contract allows: give up on it for this run (I5: a storm of
                    # short Retry-After hints would loop forever), without marking its key exhausted.
                    self._routed_around.add(message.name)
            logger.warning(
                "autogen_capacity.member_overloaded",
                team=self._team_name,
                member=message.name,
                key=plan.key,
                kind=message.kind,
                cooldown=round(out_for, 3),
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
        selecting = _WhileSelecting()
        cancellation_token.add_callback(selecting.cancel)
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
        if cancellation_token.is_cancelled():  # by the selection itself (a selector_func), with no wait after it
            if speaker is not None:
                await self._policy.leases.release(speaker)
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
        candidates = [explicit] if explicit is not None else await self._candidates(thread)
        loop = asyncio.get_running_loop()
        attempt = 0
        deadline = loop.time()
        while True:
            statuses = {name: await self._status(name) for name in candidates}
            open_ = [name for name in candidates if statuses[name].blocked_by is None]
            ordered = await self._order(open_, statuses) if explicit is None else open_
            for name in ordered:
                if await self._lease(name):
                    self._admitted(name, explicit is not None)
                    await self._reports.deferrals(candidates, statuses, name)
                    return name
                statuses[name] = await self._status(name)  # lost the race: report why
            preferred = self._preferred(candidates, statuses)
            now = loop.time()
            if now >= deadline:
                attempt += 1
                schedule = self._plans[preferred].schedule
                if attempt > schedule.max_caller_retries:
                    raise _Exhausted(
                        f"nobody could take the turn after {schedule.max_caller_retries} retries "
                        f"({describe(candidates, statuses)})",
                        _soonest(statuses),
                    )
                if attempt > 1 and not self._spend_retry():
                    raise _Exhausted(f"the team's retry budget is spent ({self._retries} retries)")
                delay = schedule.jittered_delay(attempt, _rng)
                deadline = now + delay
                await self._reports.deferrals(candidates, statuses, None)
                await self._reports.wait(candidates, statuses, attempt, schedule.max_caller_retries, delay)
            if await self._wait(candidates, deadline - now):
                return None

    def _preferred(self, candidates: Sequence[str], statuses: Mapping[str, KeyStatus]) -> str:
        """The candidate whose schedule the team follows: the first one whose entitlement is not gone."""
        usable = [n for n in candidates if statuses[n].blocked_by != "exhausted" and n not in self._routed_around]
        if not usable:
            raise _Exhausted(f"every candidate is exhausted or out of retries ({describe(candidates, statuses)})")
        return usable[0]

    async def _wait(self, candidates: Sequence[str], timeout: float) -> bool:
        """Wait for a release, refill or cooldown's end on the candidates' keys. ``True`` when the
        termination condition fired meanwhile."""
        waits: dict[str, AgentCapacity] = {}
        for name in candidates:
            plan = self._plans[name]
            if plan.team is not None:
                waits.update(plan.team.capacity_keys())
            else:
                waits[plan.key] = plan.schedule
        poll = timeout if self._termination_condition is None else min(timeout, TERMINATION_POLL_S)
        try:
            await self._ledger.wait_for_change(waits, max(poll, 0.0))
        except QueueFull as full:
            raise _Exhausted(str(full)) from full
        return self._termination_condition is not None and await self._apply_termination_condition([])

    async def _explicit_speaker(self, thread: Sequence[BaseAgentEvent | BaseChatMessage]) -> str | None:
        """The speaker named by ``selector_func``, which is waited for rather than replaced."""
        if self._selector_func is None:
            return None
        if self._is_selector_func_async:
            speaker = await cast(AsyncSelectorFunc, self._selector_func)(thread)
        else:
            speaker = cast(SyncSelectorFunc, self._selector_func)(thread)
        if speaker is not None and speaker not in self._participant_names:
            raise ValueError(
                f"Selector function returned an invalid speaker name: {speaker}. "
                f"Expected one of: {self._participant_names}."
            )
        return speaker

    async def _candidates(self, thread: Sequence[BaseAgentEvent | BaseChatMessage]) -> list[str]:
        """``candidate_func``'s names, else every participant (less the previous speaker when repeats are
        not allowed), as SelectorGroupChat builds them."""
        if self._candidate_func is not None:
            if self._is_candidate_func_async:
                names = await cast(AsyncCandidateFunc, self._candidate_func)(thread)
            else:
                names = cast(SyncCandidateFunc, self._candidate_func)(thread)
            if not names:
                raise ValueError("Candidate function must return a non-empty list of participant names.")
            if not all(name in self._participant_names for name in names):
                raise ValueError(
                    f"Candidate function returned invalid participant names: {names}. "
                    f"Expected one of: {self._participant_names}."
                )
            return list(names)
        if self._previous_speaker is not None and not self._allow_repeated_speaker and len(self._participant_names) > 1:
            return [name for name in self._participant_names if name != self._previous_speaker]
        return list(self._participant_names)

    async def _order(self, open_: Sequence[str], statuses: Mapping[str, KeyStatus]) -> list[str]:
        """Candidates with headroom in preference order: rotation, headroom rank, or the selector's pick first."""
        allowed = set(open_)
        ordered = [name for name in rotation(self._participant_names, self._next_speaker_index) if name in allowed]
        if self._policy.routing == "headroom":
            return rank_by_headroom(ordered, {name: statuses[name].headroom for name in ordered if name in statuses})
        if self._policy.routing == "selector" and len(ordered) > 1:
            # The prompt lists candidates in participant order, exactly as SelectorGroupChat's does.
            chosen = await self._model_pick([name for name in self._participant_names if name in allowed])
            if chosen is None:
                return []
            return [chosen, *(name for name in ordered if name != chosen)]
        return ordered

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
            lease = await acquire(self._policy.selector_key, capacity, ledger=self._ledger)
        except CapacityExhausted as exhausted:
            raise _Exhausted(f"the selector's model client: {exhausted}", exhausted.retry_after) from exhausted
        async with lease:
            return await self._select_speaker(roles, candidates, self._max_selector_attempts)

    async def _status(self, name: str) -> KeyStatus:
        plan = self._plans[name]
        if name in self._routed_around:
            return KeyStatus(0.0, "exhausted")
        if plan.team is not None:
            return await plan.team.capacity_status()
        if plan.contract is None and name not in self._cooled:
            return IDLE
        return await self._ledger.status(plan.key, plan.schedule)

    async def _lease(self, name: str) -> bool:
        plan = self._plans[name]
        if not plan.leased:
            return True
        assert plan.contract is not None
        lease = await self._ledger.try_acquire(plan.key, plan.contract)
        if lease is None:
            return False
        self._policy.leases.hold(name, lease)
        return True

    def _admitted(self, name: str, explicit: bool) -> None:
        self._next_speaker_index = self._participant_names.index(name) + 1
        if not explicit:
            self._previous_speaker = name

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
        reason = f"Capacity exhausted: {exhausted.reason}"
        logger.warning("autogen_capacity.exhausted", team=self._team_name, reason=reason)
        await self._emit(lambda: CapacityExhaustedEvent(content=reason, source=self._team_name))
        if self._policy.on_exhausted == "raise":
            self._policy.leases.pending_error = CapacityExhausted(
                reason, snapshot=await self._ledger.snapshot(), retry_after=exhausted.retry_after
            )
        if self._termination_condition is not None:
            await self._termination_condition.reset()
        self._current_turn = 0
        await self._signal_termination(StopMessage(content=reason, source=self._team_name))


def _soonest(statuses: Mapping[str, KeyStatus]) -> float | None:
    ready = [s.ready_in for s in statuses.values() if s.ready_in is not None]
    return min(ready) if ready else None


def _tokens_used(message: GroupChatAgentResponse | GroupChatTeamResponse) -> int:
    if isinstance(message, GroupChatAgentResponse):
        produced: list[BaseAgentEvent | BaseChatMessage] = [
            *(message.response.inner_messages or []),
            message.response.chat_message,
        ]
    else:
        produced = list(message.result.messages)
    return sum(
        m.models_usage.prompt_tokens + m.models_usage.completion_tokens for m in produced if m.models_usage is not None
    )
