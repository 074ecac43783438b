"""The Redis client a :class:`~autogen_capacity.RedisLedger` builds: a blocking pool (callers queue for a
connection, never fail for lack of one) that reconnects a connection the server dropped, and the URL as logs and
errors show it."""

from __future__ import annotations

import codecs
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from ._config_model import INSTALL_HINT
from ._redis_wakeups import PUBSUB_IDLE_S, text

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.connection import AbstractConnection

__all__ = ["MAX_CONNECTIONS", "build_client", "hiredis_packing", "redact", "scan_keys", "unreachable_errors"]

MAX_CONNECTIONS = 64


def unreachable_errors() -> tuple[type[Exception], ...]:
    """The errors that mean Redis could not be reached (retried, then ``LedgerUnavailable``).

    Raises:
        ImportError: redis-py is not installed.
    """
    try:
        import redis.asyncio  # noqa: F401  (the ledger's client)
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return (RedisConnectionError, RedisTimeoutError)


def build_client(url: str) -> Redis:
    """A client for ``url`` on a blocking pool of :data:`MAX_CONNECTIONS`, packing commands with hiredis when it
    is installed."""
    from redis.asyncio import BlockingConnectionPool, Redis

    pool = BlockingConnectionPool.from_url(url, max_connections=MAX_CONNECTIONS, **_connection_options())
    if codecs.lookup(pool.connection_kwargs.get("encoding", "utf-8")).name == "utf-8":  # hiredis' encoding
        cls = pool.connection_class
        if cls not in _PACKED:
            _PACKED[cls] = hiredis_packing(cls)
        pool.connection_class = _PACKED[cls]
    return Redis.from_pool(pool)


_PACKED: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def hiredis_packing(connection_class: type[AbstractConnection]) -> type[AbstractConnection]:
    """``connection_class`` packing each command with hiredis' C packer, or itself without hiredis.

    redis-py's asyncio connection packs every command in Python (its synchronous one uses hiredis): about 30 µs
    for one of the ledger's scripts against 5 µs. The bytes are the same; a command hiredis cannot pack as is (a
    name of two words, a bool or memoryview argument) falls back to redis-py, which packs it or raises its own
    error.
    """
    try:
        from hiredis import pack_command
    except ImportError:
        return connection_class

    def pack(self: AbstractConnection, *args: Any) -> list[bytes]:
        if isinstance(args[0], str) and " " not in args[0]:
            try:
                return [pack_command(args)]
            except TypeError:
                pass
        return connection_class.pack_command(self, *args)

    return type(f"Hiredis{connection_class.__name__}", (connection_class,), {"pack_command": pack})


def _connection_options() -> dict[str, Any]:
    """Connection options: a command that meets a lost connection (a server restarted since the connection was
    made) reconnects and is sent again once at once; the ledger's own retries take over after that."""
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return {
        "socket_connect_timeout": 5.0,
        "socket_timeout": 5.0,
        "health_check_interval": PUBSUB_IDLE_S,
        "retry": Retry(NoBackoff(), 1),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
    }


def redact(url: str) -> str:
    """The URL without user, password or query (which may carry a password)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2], query=""))


async def scan_keys(client: Redis, namespace: str, parts: frozenset[str]) -> set[str]:
    """The ledger keys of ``namespace`` that have one of ``parts`` in Redis (found with ``SCAN``)."""
    prefix, keys = f"{namespace}:{{", set()
    async for name in client.scan_iter(match=f"{_glob_escape(namespace)}:{{*}}:*", count=1000):
        key, _, part = text(name)[len(prefix) :].rpartition("}:")
        if part in parts:
            keys.add(key)
    return keys


def _glob_escape(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)
