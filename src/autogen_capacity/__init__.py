"""Capacity contracts for AutoGen AgentChat teams: members declare what they can take, teams route by it."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from ._config import CapacityAwareGroupChatConfig
from ._manager import CapacityAwareGroupChatManager, CapacityAwareManagerState
from ._team import CapacityAwareGroupChat
from .admission import acquire, lease
from .contracts import AgentCapacity, AggregateMode, RetryBudget
from .events import (
    CAPACITY_EVENT_TYPES,
    CapacityDeferredEvent,
    CapacityExhaustedEvent,
    CapacityWaitEvent,
    Deferral,
    MemberOverloadedEvent,
)
from .exceptions import (
    CapacityConfigWarning,
    CapacityError,
    CapacityExhausted,
    ContractError,
    LedgerClosedError,
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
from .overload import Overload, OverloadClassifier, classify_overload
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
    "CapacityAwareGroupChat",
    "CapacityAwareGroupChatConfig",
    "CapacityAwareGroupChatManager",
    "CapacityAwareManagerState",
    "CapacityAwareTeamTool",
    "CapacityAwareTeamToolConfig",
    "CapacityConfigWarning",
    "CapacityDeferredEvent",
    "CapacityError",
    "CapacityExhausted",
    "CapacityExhaustedEvent",
    "CapacityLedger",
    "CapacityWaitEvent",
    "ContractError",
    "Deferral",
    "InMemoryLedger",
    "KeyStatus",
    "KeyUsage",
    "Lease",
    "LedgerClosedError",
    "LedgerConfig",
    "LedgerSnapshot",
    "LedgerUnavailable",
    "MemberOverloadedEvent",
    "Overload",
    "OverloadClassifier",
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
