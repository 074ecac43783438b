"""Building the ledger a team's component config names, and naming a ledger in config (never by its URL)."""

from __future__ import annotations

import asyncio
import weakref

from ._config_model import DEFAULT_LEASE_TTL_S, DEFAULT_NAMESPACE, DEFAULT_REDIS_URL_ENV, LedgerConfig
from .base import CapacityLedger
from .memory import InMemoryLedger, default_ledger, is_default_ledger
from .redis import RedisLedger

__all__ = ["DEFAULT_REDIS_URL_ENV", "LedgerConfig", "ledger_config_of", "ledger_from_config"]

_shared: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str, float], RedisLedger]] = (
    weakref.WeakKeyDictionary()
)


def ledger_from_config(config: LedgerConfig) -> CapacityLedger:
    """The ledger ``config`` names, shared like :func:`~autogen_capacity.default_ledger`: one per running
    event loop for the memory provider (the default ledger itself), and one :class:`RedisLedger` per running
    loop and (URL, namespace, lease ttl) for Redis, so every team loaded from equal configs in a process
    shares one client, one wake-up listener and one renewal task. A shared ledger that was closed is
    replaced by a new one on the next call. Close a Redis one with ``await ledger.aclose()`` at shutdown.

    Raises:
        RuntimeError: no event loop is running.
        ValueError: the variable named by ``url_env`` is unset or empty (the message names it).
        ImportError: redis-py is not installed (``pip install autogen-capacity[redis]``).
    """
    if config.provider == "memory":
        return default_ledger()
    url = config.redis_url()
    namespace, ttl = config.namespace or DEFAULT_NAMESPACE, config.lease_ttl_s or DEFAULT_LEASE_TTL_S
    loop = asyncio.get_running_loop()
    ledgers = _shared.setdefault(loop, {})
    ledger = ledgers.get((url, namespace, ttl))
    if ledger is None or ledger.closed:
        ledger = ledgers[(url, namespace, ttl)] = RedisLedger(url, namespace=namespace, lease_ttl_s=ttl)
        ledger._config = config
    return ledger


def ledger_config_of(ledger: CapacityLedger) -> LedgerConfig | None:
    """How ``ledger`` can be named in config, or ``None`` when it cannot: a :class:`RedisLedger` built by
    :func:`ledger_from_config` names its environment variable, the default in-process ledger is
    ``{"provider": "memory"}``; a ledger built from a URL (or any other ledger object) is not described,
    so no URL is ever written into config."""
    if isinstance(ledger, InMemoryLedger):
        return LedgerConfig(provider="memory") if is_default_ledger(ledger) else None
    config = getattr(ledger, "config", None)
    return config if isinstance(config, LedgerConfig) else None
