"""A member answers 429 with Retry-After once: the run goes on, another member takes the turn.

Offline (no API key): scripted agents stand in for model-backed ones. Run: python examples/flaky_member.py
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from autogen_agentchat.agents import BaseChatAgent
from autogen_agentchat.base import Response
from autogen_agentchat.messages import BaseChatMessage, TextMessage
from autogen_agentchat.ui import Console
from autogen_core import CancellationToken

from autogen_capacity import AgentCapacity, CapacityAwareGroupChat, InMemoryLedger


class RateLimitError(Exception):
    """Shaped like openai.RateLimitError: a status code and the response's headers."""

    def __init__(self, retry_after: str) -> None:
        super().__init__("Error code: 429 - rate limit reached")
        self.status_code = 429
        self.response = type("Response", (), {"status_code": 429, "headers": {"Retry-After": retry_after}})()


class Writer(BaseChatAgent):
    """Answers after ``think`` seconds; the first ``throttled`` calls fail with a 429."""

    def __init__(self, name: str, *, throttled: int = 0, think: float = 0.0) -> None:
        super().__init__(name, description=f"A writer called {name}.")
        self._throttled, self._think, self._drafts = throttled, think, 0

    @property
    def produced_message_types(self) -> Sequence[type[BaseChatMessage]]:
        return (TextMessage,)

    async def on_messages(self, messages: Sequence[BaseChatMessage], cancellation_token: CancellationToken) -> Response:
        if self._throttled:
            self._throttled -= 1
            raise RateLimitError(retry_after="0.2")
        await asyncio.sleep(self._think)
        self._drafts += 1
        return Response(chat_message=TextMessage(content=f"draft {self._drafts} by {self.name}", source=self.name))

    async def on_reset(self, cancellation_token: CancellationToken) -> None:
        self._drafts = 0


async def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")  # shows the cooldown
    ledger = InMemoryLedger()
    team = CapacityAwareGroupChat(
        [Writer("primary", throttled=1), Writer("backup", think=0.3)],
        capacities={"primary": AgentCapacity(max_concurrent=1), "backup": AgentCapacity(max_concurrent=1)},
        ledger=ledger,
        max_turns=3,
        emit_team_events=True,  # MemberOverloadedEvent shows up in the stream
    )
    # primary is throttled (cooled down 0.2 s), backup takes the turn, then primary is back in rotation.
    result = await Console(team.run_stream(task="Write a haiku about backpressure."))
    print("speakers:", [m.source for m in result.messages if isinstance(m, BaseChatMessage)])
    print("in flight after the run:", {key: usage.in_flight for key, usage in (await ledger.snapshot()).items()})


if __name__ == "__main__":
    asyncio.run(main())
