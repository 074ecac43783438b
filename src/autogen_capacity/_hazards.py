"""Configuration hazards a developer must fix before deployment: Python warnings (:class:`CapacityConfigWarning`),
shown once per place and filterable. Runtime events are logs, not warnings."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from autogen_agentchat.base import ChatAgent, Team
from autogen_agentchat.messages import BaseAgentEvent, MessageFactory

from .events import CAPACITY_EVENT_TYPES
from .exceptions import CapacityConfigWarning

__all__ = ["client_retries", "unrelayed_event_types", "warn_about_client_retries"]


def client_retries(client: object) -> int | None:
    """The retries an OpenAI-family model client makes by itself (its SDK client's ``max_retries``), if known."""
    inner: Any = getattr(client, "_client", None)
    retries = getattr(inner, "max_retries", None)
    return retries if isinstance(retries, int) else None


def warn_about_client_retries(participants: Sequence[ChatAgent | Team]) -> None:
    """Retries inside an OpenAI-family client multiply load under the team's own retries: a configuration hazard
    to fix before deployment, so a :class:`CapacityConfigWarning` (shown once per place, filterable), not a log.

    Called from a constructor: the warning points at the line that called it."""
    for participant in participants:
        retries = client_retries(getattr(participant, "_model_client", None))
        if retries:
            warnings.warn(
                f"the model client of member {participant.name!r} retries by itself (max_retries={retries}), which "
                "multiplies requests under 429s: the team already retries by contract. Build the client with "
                "max_retries=0.",
                CapacityConfigWarning,
                stacklevel=3,  # this function, the constructor, the caller
            )


def unrelayed_event_types(
    team_name: str, emit_team_events: bool, relay: MessageFactory | None
) -> tuple[type[BaseAgentEvent], ...]:
    """The capacity events the parent relaying a team's run would refuse (``relay``: its message factory, ``None``
    when nothing checks the stream): they stay out of the stream, so they cannot end the parent's run, and the
    first run says what the parent needs."""
    if relay is None or not emit_team_events:
        return ()
    unrelayed = tuple(t for t in CAPACITY_EVENT_TYPES if not relay.is_registered(t))
    if unrelayed:
        warnings.warn(
            f"team {team_name!r} emits capacity events (emit_team_events=True) but the team it runs in does "
            "not register them: they are logged, not relayed. Give the parent team "
            "custom_message_types=list(autogen_capacity.CAPACITY_EVENT_TYPES), or build "
            f"{team_name!r} with emit_team_events=False.",
            CapacityConfigWarning,
            stacklevel=3,  # this function, the team's run_stream, the parent's container that runs it
        )
    return unrelayed
