"""Ledgers: the shared record of usage per key."""

from __future__ import annotations

from .base import BlockReason, CapacityLedger, KeyStatus, KeyUsage, Lease, LedgerSnapshot
from .memory import InMemoryLedger, default_ledger

__all__ = [
    "BlockReason",
    "CapacityLedger",
    "InMemoryLedger",
    "KeyStatus",
    "KeyUsage",
    "Lease",
    "LedgerSnapshot",
    "default_ledger",
]
