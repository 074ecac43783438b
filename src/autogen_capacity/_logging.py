"""The library's structlog logger.

The library never calls ``structlog.configure``. Its logger is a structlog ``BoundLogger`` over the
standard ``logging`` logger ``autogen_capacity``, which has no handler of its own: the library is silent
until the app configures logging (``logging.basicConfig``) or structlog.
"""

from __future__ import annotations

import logging
from typing import Any

import structlog

__all__ = ["LOGGER_NAME", "info_enabled", "logger"]

LOGGER_NAME = "autogen_capacity"
_stdlib_logger = logging.getLogger(LOGGER_NAME)
_stdlib_logger.addHandler(logging.NullHandler())


def _render(_logger: Any, _method: str, event_dict: structlog.types.EventDict) -> str:
    event = event_dict.pop("event")
    fields = " ".join(f"{k}={v!r}" for k, v in event_dict.items())
    return f"{event} {fields}".rstrip()


logger: structlog.typing.FilteringBoundLogger = structlog.wrap_logger(
    _stdlib_logger,
    # filter_by_level first: an event below the stdlib logger's level costs one isEnabledFor() call.
    processors=[structlog.stdlib.filter_by_level, _render],  # the stdlib record carries the level
    wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
)
"""Log ``autogen_capacity.*`` events with key/value fields through the standard ``autogen_capacity`` logger."""


def info_enabled() -> bool:
    """Whether ``logger.info`` events go anywhere: callers skip building costly fields when they do not."""
    return _stdlib_logger.isEnabledFor(logging.INFO)
