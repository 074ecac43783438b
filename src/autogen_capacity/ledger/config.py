"""Naming a ledger in a team's component config: the backend and where its URL comes from, never the URL."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import weakref
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..exceptions import ConfigError
from .base import CapacityLedger
from .memory import default_ledger

if TYPE_CHECKING:
    from .redis import RedisLedger

__all__ = ["DEFAULT_REDIS_URL_ENV", "LedgerConfig", "ledger_config_of", "ledger_from_config"]

DEFAULT_REDIS_URL_ENV = "AUTOGEN_CAPACITY_REDIS_URL"
"""The environment variable a ``{"provider": "redis"}`` ledger config reads its URL from by default."""

_REDIS_FIELDS = ("url_env", "namespace", "lease_ttl_s")
_DEFAULT_NAMESPACE = "autogen_capacity"
_DEFAULT_TTL_S = 30.0
_REDIS_DEFAULTS: dict[str, Any] = {
    "url_env": DEFAULT_REDIS_URL_ENV,
    "namespace": _DEFAULT_NAMESPACE,
    "lease_ttl_s": _DEFAULT_TTL_S,
}


class LedgerConfig(BaseModel):
    """Which ledger a team records usage in, as it appears under ``"ledger"`` in the team's config.

    ``{"provider": "memory"}`` is the in-process :func:`~autogen_capacity.default_ledger` (what a team uses
    when its config names no ledger). ``{"provider": "redis", "url_env": "AUTOGEN_CAPACITY_REDIS_URL",
    "namespace": "autogen_capacity", "lease_ttl_s": 30.0}`` is a :class:`~autogen_capacity.RedisLedger` whose
    URL is read from the environment variable ``url_env`` when the team is loaded and run, so no URL (nor
    the password it may carry) is ever written into config. Omitted Redis fields take those defaults;
    the Redis fields are refused for the memory provider.

    .. versionadded:: 0.1.0
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: Literal["memory", "redis"]
    url_env: str | None = Field(default=None, min_length=1)
    """Redis only: the environment variable holding the Redis URL."""
    namespace: str | None = Field(default=None, min_length=1)
    """Redis only: the prefix of every Redis key; ledgers with the same namespace share their limits."""
    lease_ttl_s: float | None = Field(default=None, gt=0)
    """Redis only: seconds a lease outlives its holder's last renewal."""

    @model_validator(mode="before")
    @classmethod
    def _provider_fields(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if data.get("provider") == "redis":
            return {**{k: v for k, v in _REDIS_DEFAULTS.items() if data.get(k) is None}, **_set(data)}
        if data.get("provider") == "memory":
            given = [name for name in _REDIS_FIELDS if data.get(name) is not None]
            if given:
                raise ValueError(f"{', '.join(given)} only apply to provider 'redis', not 'memory'")
        return data

    def redis_url(self) -> str:
        """The Redis URL, read from the environment variable ``url_env``.

        Raises:
            ConfigError: the provider is not Redis, or the variable is unset or empty (the message names it).
        """
        if self.provider != "redis" or self.url_env is None:
            raise ConfigError(f"a {self.provider!r} ledger has no Redis URL")
        url = os.environ.get(self.url_env, "").strip()
        if not url:
            raise ConfigError(
                f"the team's ledger config reads the Redis URL from the environment variable {self.url_env}, "
                f"which is not set (set it to e.g. redis://localhost:6379/0)"
            )
        return url

    def check(self) -> None:
        """Fail now, not at the first run, when the ledger cannot be built: the URL's environment variable
        is unset, or redis-py is missing.

        Raises:
            ValueError: the variable named by ``url_env`` is unset or empty.
            ImportError: redis-py is not installed (``pip install autogen-capacity[redis]``).
        """
        if self.provider == "redis":
            self.redis_url()
            if importlib.util.find_spec("redis") is None:
                from .redis import INSTALL_HINT

                raise ImportError(INSTALL_HINT)


def _set(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}


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
    from .redis import RedisLedger

    url = config.redis_url()
    namespace, ttl = config.namespace or _DEFAULT_NAMESPACE, config.lease_ttl_s or _DEFAULT_TTL_S
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
    config = getattr(ledger, "config", None)
    return config if isinstance(config, LedgerConfig) else None
