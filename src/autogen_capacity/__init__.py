"""Capacity contracts for AutoGen AgentChat teams: members declare what they can take, teams route by it."""

from __future__ import annotations

import importlib as _importlib
import warnings as _warnings
from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from ._config import CapacityAwareGroupChatConfig
from ._team import CapacityAwareGroupChat
from .admission import acquire, lease
from .contracts import AgentCapacity, AggregateMode, RetryBudget
from .events import (
    CAPACITY_EVENT_TYPES,
    CapacityDeferredEvent,
    CapacityExhaustedEvent,
    CapacityWaitEvent,
    Deferral,
    LiveLimitChangedEvent,
    MemberOverloadedEvent,
)
from .exceptions import (
    CapacityConfigWarning,
    CapacityError,
    CapacityExhausted,
    ConfigError,
    ContractError,
    LedgerClosed,
    LedgerUnavailable,
    Overloaded,
    QueueFull,
)
from .ledger import (
    BlockReason,
    CapacityLedger,
    InMemoryLedger,
    KeyStatus,
    KeyUsage,
    Lease,
    LedgerConfig,
    LedgerSnapshot,
    default_ledger,
    ledger_from_config,
)
from .ledger.redis import RedisLedger
from .model_client import CapacityAwareChatCompletionClient, CapacityAwareChatCompletionClientConfig
from .overload import OverloadClassifier, OverloadSignal, classify_overload
from .routing import Routing
from .tools import (
    CapacityAwareAgentTool,
    CapacityAwareAgentToolConfig,
    CapacityAwareTeamTool,
    CapacityAwareTeamToolConfig,
)

try:
    __version__ = _version("autogen-capacity")
except _PackageNotFoundError:  # pragma: no cover  (running from a source tree that was never installed)
    __version__ = "0.0.0"

__all__ = [
    "CAPACITY_EVENT_TYPES",
    "AgentCapacity",
    "AggregateMode",
    "BlockReason",
    "CapacityAwareAgentTool",
    "CapacityAwareAgentToolConfig",
    "CapacityAwareChatCompletionClient",
    "CapacityAwareChatCompletionClientConfig",
    "CapacityAwareGroupChat",
    "CapacityAwareGroupChatConfig",
    "CapacityAwareTeamTool",
    "CapacityAwareTeamToolConfig",
    "CapacityConfigWarning",
    "CapacityDeferredEvent",
    "CapacityError",
    "CapacityExhausted",
    "CapacityExhaustedEvent",
    "CapacityLedger",
    "CapacityWaitEvent",
    "ConfigError",
    "ContractError",
    "Deferral",
    "InMemoryLedger",
    "KeyStatus",
    "KeyUsage",
    "Lease",
    "LedgerClosed",
    "LedgerConfig",
    "LedgerSnapshot",
    "LedgerUnavailable",
    "LiveLimitChangedEvent",
    "MemberOverloadedEvent",
    "OverloadClassifier",
    "OverloadSignal",
    "Overloaded",
    "QueueFull",
    "RedisLedger",
    "RetryBudget",
    "Routing",
    "__version__",
    "acquire",
    "classify_overload",
    "default_ledger",
    "lease",
    "ledger_from_config",
]

_DEPRECATED = {
    "CapacityAwareGroupChatManager": (
        "autogen_capacity._manager",
        "an internal of the team (AutoGen exports no managers)",
    ),
    "CapacityAwareManagerState": ("autogen_capacity._manager", "an internal of the team"),
    "LedgerClosedError": ("autogen_capacity.exceptions", "renamed LedgerClosed"),
    "Overload": ("autogen_capacity.overload", "renamed OverloadSignal"),
}
"""Names 0.1.0 exported, kept for one release: each access warns with a ``DeprecationWarning``."""


def __getattr__(name: str) -> object:
    if name not in _DEPRECATED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, why = _DEPRECATED[name]
    _warnings.warn(
        f"autogen_capacity.{name} is deprecated ({why}) and goes away in the next release",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(_importlib.import_module(module), name)
