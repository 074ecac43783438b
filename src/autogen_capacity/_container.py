"""The participant container: runs a member's turn and reports overload to the manager instead of failing."""

from __future__ import annotations

from collections.abc import Iterable
from contextvars import ContextVar
from typing import Literal

from autogen_agentchat.base import ChatAgent, Response, TaskResult, Team
from autogen_agentchat.messages import BaseAgentEvent, BaseChatMessage, MessageFactory
from autogen_agentchat.teams import BaseGroupChat
from autogen_core import DefaultTopicId, MessageContext, event, rpc, trace_invoke_agent_span
from pydantic import BaseModel

from ._compat import (
    ChatAgentContainer,
    GroupChatAgentResponse,
    GroupChatError,
    GroupChatPause,
    GroupChatRequestPublish,
    GroupChatResume,
    GroupChatTeamResponse,
    SerializableException,
)
from ._turn_undo import TurnCheckpoint, checkpoint
from ._turns import TurnKeeper
from .exceptions import LedgerUnavailable
from .ledger import Lease
from .overload import OverloadClassifier, OverloadSignal

__all__ = [
    "GRANTED_LEASE",
    "TURN_LEASE",
    "CapacityAwareAgentContainer",
    "GroupChatMemberOverloaded",
    "take_granted_lease",
    "tokens_used",
]

GRANTED_LEASE: ContextVar[Lease | None] = ContextVar("autogen_capacity_granted_lease", default=None)
"""The lease a parent team took on a nested team's own key for the turn it runs (the nested team runs under it
instead of taking a second one on the same key)."""

TURN_LEASE: ContextVar[Lease | None] = ContextVar("autogen_capacity_turn_lease", default=None)
"""The lease the team holds for the member turn running now: a capacity-aware model client's call on the same key
during the turn runs under it (the team records its tokens and overloads) instead of taking a second one."""


class GroupChatMemberOverloaded(BaseModel):
    """Private message from a container to its manager: the member's turn failed with an overload signal,
    already recorded in the ledger."""

    name: str
    kind: Literal["throttled", "exhausted"]
    out_for_s: float
    """Seconds the member's key is out of routing."""
    given_up: bool
    """Overloaded on every retry its contract allows: routed around for the rest of the run."""
    error: SerializableException


def take_granted_lease(key: str) -> Lease | None:
    """The lease a parent took on ``key`` for the nested team now starting its run, if any. It is taken: the
    team's own members (its runtime starts from this context) do not see it."""
    granted = GRANTED_LEASE.get()
    GRANTED_LEASE.set(None)
    return granted if granted is not None and granted.key == key and not granted.released else None


def tokens_used(messages: Iterable[BaseAgentEvent | BaseChatMessage]) -> int:
    """Model tokens (prompt and completion) the messages' ``models_usage`` report."""
    return sum(m.models_usage.prompt_tokens + m.models_usage.completion_tokens for m in messages if m.models_usage)


class CapacityAwareAgentContainer(ChatAgentContainer):
    """A :class:`ChatAgentContainer` whose turns report overload to the manager's own topic.

    An overload (as the classifier sees it) is not an error of the run: the container keeps its message
    buffer (nothing is lost when the member speaks later), undoes the turn from a checkpoint taken before
    it (so the kept messages are not added to its context twice), records the overload in the ledger, frees
    the slot and tells the manager, which reroutes the turn.
    Every other exception is published and raised exactly as AutoGen does.
    """

    def __init__(
        self,
        parent_topic_type: str,
        output_topic_type: str,
        manager_topic_type: str,
        agent: ChatAgent | Team,
        message_factory: MessageFactory,
        classify: OverloadClassifier,
        turns: TurnKeeper,
    ) -> None:
        super().__init__(parent_topic_type, output_topic_type, agent, message_factory)
        self._manager_topic_type = manager_topic_type
        self._classify = classify
        self._turns = turns

    # AutoGen types a handler by its class, so mypy sees an override; this one replaces the base handler.
    @event
    async def handle_request(  # type: ignore[override]
        self, message: GroupChatRequestPublish, ctx: MessageContext
    ) -> None:
        """Run the member's turn (same name as the base handler, which it replaces)."""
        if ctx.cancellation_token.is_cancelled():  # the request of a run already over (a shared runtime delivers
            return  # it anyway): no turn, and its lease was the run's to free, not this turn's to take
        # An agent adds the buffer to its own context before it calls its model: an overloaded turn is undone
        # so that the retry, which is handed the kept buffer again, does not show the model every message twice.
        name = self._agent.name
        before: TurnCheckpoint | None = None
        lease = self._turns.begin(name)  # this turn's own: freed when it ends, whatever the run does meanwhile
        try:
            before = await checkpoint(self._agent)
            response = await self._run_turn(ctx, lease)
        except Exception as e:
            overload = self._classify(e)
            if overload is not None:
                try:
                    await self._reroute(name, lease, before, overload, e, ctx)
                    return
                except Exception as failed:  # undoing the turn or recording the overload failed: the run ends
                    await self._end_run(failed, lease, ctx)
                    raise
            await self._end_run(e, lease, ctx)
            raise
        finally:
            await self._turns.end(lease)  # whatever is left (a cancelled turn): nothing to record
        self._message_buffer.clear()
        await self.publish_message(
            response, topic_id=DefaultTopicId(type=self._parent_topic_type), cancellation_token=ctx.cancellation_token
        )

    async def _reroute(
        self,
        name: str,
        lease: Lease | None,
        before: TurnCheckpoint | None,
        overload: OverloadSignal,
        error: Exception,
        ctx: MessageContext,
    ) -> None:
        """The turn was overloaded: undo it, record the overload (then free the slot) and tell the manager, which
        reroutes the turn."""
        if before is not None:
            await before.restore()
        verdict = await self._turns.overloaded(name, lease, overload)
        report = GroupChatMemberOverloaded(
            name=name,
            kind=verdict.kind,
            out_for_s=verdict.out_for,
            given_up=verdict.given_up,
            error=SerializableException.from_exception(error),
        )
        await self.publish_message(
            report,
            topic_id=DefaultTopicId(type=self._manager_topic_type),
            cancellation_token=ctx.cancellation_token,  # the rerouted turn's wait is cancelled with the run
        )

    async def _end_run(self, error: Exception, lease: Lease | None, ctx: MessageContext) -> None:
        """The turn failed: free its slot and end the run with ``error``, as AutoGen does (typed when it is the
        ledger's)."""
        if isinstance(error, LedgerUnavailable):
            self._turns.ledger_failed(error)
        await self._turns.end(lease)
        await self.publish_message(
            GroupChatError(error=SerializableException.from_exception(error)),
            topic_id=DefaultTopicId(type=self._parent_topic_type),
            cancellation_token=ctx.cancellation_token,
        )

    @rpc
    async def handle_pause(self, message: GroupChatPause, ctx: MessageContext) -> None:  # type: ignore[override]
        """Pause the member. A nested team that is not running is skipped: AutoGen would wait forever on
        its stopped runtime (replaces the base handler of the same name)."""
        if not _is_idle_team(self._agent):
            await ChatAgentContainer.handle_pause(self, message, ctx)

    @rpc
    async def handle_resume(self, message: GroupChatResume, ctx: MessageContext) -> None:  # type: ignore[override]
        """Resume the member; a nested team that is not running is skipped, as in :meth:`handle_pause`."""
        if not _is_idle_team(self._agent):
            await ChatAgentContainer.handle_resume(self, message, ctx)

    async def _run_turn(
        self, ctx: MessageContext, lease: Lease | None
    ) -> GroupChatAgentResponse | GroupChatTeamResponse:
        """The member's turn, as AutoGen 0.7.5's ``ChatAgentContainer.handle_request`` runs it; as soon as the
        final item (the response or the result) arrives, its tokens are recorded and its lease released."""
        name = self._agent.name
        if isinstance(self._agent, Team):
            result: TaskResult | None = None
            granted = GRANTED_LEASE.set(lease)
            try:
                # A nested team picked again before anything new reached it (a repeat, or a turn rerouted after
                # an overload) carries on its own thread: AutoGen refuses an empty task list.
                async for item in self._agent.run_stream(
                    task=self._message_buffer or None,
                    cancellation_token=ctx.cancellation_token,
                    output_task_messages=False,
                ):
                    if isinstance(item, TaskResult):
                        await self._turns.answered(name, lease, tokens_used(item.messages))
                        result = item
                    else:
                        await self._log_message(item)
            finally:
                GRANTED_LEASE.reset(granted)
            if result is None:
                raise RuntimeError("The team did not produce a final TaskResult. Check the team's run_stream method.")
            return GroupChatTeamResponse(result=result, name=name)
        with trace_invoke_agent_span(
            agent_name=self._agent.name, agent_description=self._agent.description, agent_id=str(self.id)
        ):
            response: Response | None = None
            turn = TURN_LEASE.set(lease)
            try:
                async for msg in self._agent.on_messages_stream(self._message_buffer, ctx.cancellation_token):
                    if isinstance(msg, Response):
                        await self._turns.answered(
                            name, lease, tokens_used([*(msg.inner_messages or ()), msg.chat_message])
                        )
                        await self._log_message(msg.chat_message)
                        response = msg
                    else:
                        await self._log_message(msg)
            finally:
                TURN_LEASE.reset(turn)
            if response is None:
                raise RuntimeError(
                    "The agent did not produce a final response. Check the agent's on_messages_stream method."
                )
            return GroupChatAgentResponse(response=response, name=name)


def _is_idle_team(agent: ChatAgent | Team) -> bool:
    """A nested group chat between runs (its embedded runtime is stopped: a message to it is never answered)."""
    return isinstance(agent, BaseGroupChat) and not getattr(agent, "_is_running", True)
