"""Who relays a run's stream: the AutoGen container that checks each event against its message factory.

Written against AutoGen AgentChat 0.7.5. A parent team's ``ChatAgentContainer.handle_request`` iterates a nested
team's ``run_stream`` (directly, or through a ``SocietyOfMindAgent``'s ``on_messages_stream``) and hands every
item to ``_log_message``, which raises ``ValueError("Message type ... is not registered.")`` for a type its
``_message_factory`` does not know, ending the parent's run. A nested team asks here, when its stream starts,
which factory that is, so that it never yields what its consumer would refuse.
"""

from __future__ import annotations

import inspect
from types import FrameType

from autogen_agentchat.messages import MessageFactory

from ._compat import ChatAgentContainer

__all__ = ["relaying_factory"]

_MAX_RELAYS = 8
"""Async generators (streams re-yielding a stream) walked through before giving up on finding the consumer."""


def relaying_factory(consumer: FrameType | None) -> MessageFactory | None:
    """The message factory of the AutoGen container that relays a stream, given the frame that consumes it.

    The consumer is the first frame up the chain that is not itself a stream (an async generator re-yielding
    items, as ``SocietyOfMindAgent.on_messages_stream`` does). When it is a ``ChatAgentContainer`` method, every
    item will be checked against that container's factory; otherwise (the user's own loop, ``Team.run``, a
    console) nothing checks the items and ``None`` is returned.
    """
    for _ in range(_MAX_RELAYS):
        if consumer is None or not consumer.f_code.co_flags & inspect.CO_ASYNC_GENERATOR:
            break
        consumer = consumer.f_back
    if consumer is None:
        return None
    owner = consumer.f_locals.get("self")
    if isinstance(owner, ChatAgentContainer):
        factory: MessageFactory = owner._message_factory
        return factory
    return None
