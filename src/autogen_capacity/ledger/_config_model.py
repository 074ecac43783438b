"""How a ledger is named in a team's component config: the backend and where its URL comes from, never the
URL. A plain model with no ledger behind it, so that the ledgers can describe themselves with it."""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..exceptions import ConfigError

__all__ = ["DEFAULT_LEASE_TTL_S", "DEFAULT_NAMESPACE", "DEFAULT_REDIS_URL_ENV", "INSTALL_HINT", "LedgerConfig"]

INSTALL_HINT = "RedisLedger needs redis-py: pip install autogen-capacity[redis]"
DEFAULT_LEASE_TTL_S = 30.0
"""Seconds a Redis lease outlives its holder's last renewal (see docs/distributed.md for the trade-off)."""
DEFAULT_NAMESPACE = "autogen_capacity"
DEFAULT_REDIS_URL_ENV = "AUTOGEN_CAPACITY_REDIS_URL"
"""The environment variable a ``{"provider": "redis"}`` ledger config reads its URL from by default."""

_REDIS_FIELDS = ("url_env", "namespace", "lease_ttl_s")
_REDIS_DEFAULTS: dict[str, Any] = {
    "url_env": DEFAULT_REDIS_URL_ENV,
    "namespace": DEFAULT_NAMESPACE,
    "lease_ttl_s": DEFAULT_LEASE_TTL_S,
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
                raise ImportError(INSTALL_HINT)


def _set(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}
