"""Ledgers: the shared record of usage per key."""

from __future__ import annotations

from .base import BlockReason, CapacityLedger, KeyStatus, KeyUsage, Lease, LedgerSnapshot, LiveLimitChange
from .config import LedgerConfig, ledger_config_of, ledger_from_config
from .memory import InMemoryLedger, default_ledger

__all__ = [
    "BlockReason",
    "CapacityLedger",
    "InMemoryLedger",
    "KeyStatus",
    "KeyUsage",
    "Lease",
    "LedgerConfig",
    "LedgerSnapshot",
    "LiveLimitChange",
    "default_ledger",
    "ledger_config_of",
    "ledger_from_config",
]
