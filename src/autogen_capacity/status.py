"""``autogen-capacity status LEDGER``: what a ledger holds now, key by key, read-only.

The ledger is named the way a team's config names it: ``memory``, a Redis URL (``redis://``, ``rediss://``,
``unix://``), the name of an environment variable holding one (a config's ``url_env``), or a ledger config as
JSON (``{"provider": "redis", "url_env": "AUTOGEN_CAPACITY_REDIS_URL"}``). Only
:meth:`~autogen_capacity.CapacityLedger.snapshot` is called: nothing is acquired, released or recorded.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import ValidationError
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from .ledger import CapacityLedger, InMemoryLedger, LedgerSnapshot
from .ledger.config import LedgerConfig

__all__ = ["LedgerSpecError", "Watched", "open_ledger", "render", "snapshot_to_dict", "watch"]

DEFAULT_NAMESPACE = "autogen_capacity"
_URL_SCHEMES = ("redis", "rediss", "unix")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MEMORY_NOTE = "an in-process ledger lives in its app's process: nothing of it is visible from here"


class LedgerSpecError(ValueError):
    """The ``LEDGER`` argument names no ledger this command can read."""


@dataclass(frozen=True, slots=True)
class Watched:
    """A ledger opened for reading, and how to name it on screen (no password, no query)."""

    ledger: CapacityLedger
    name: str
    namespace: str | None
    note: str | None = None


def open_ledger(spec: str, *, namespace: str | None = None) -> Watched:
    """The ledger ``spec`` names (see the module documentation); ``namespace`` overrides a Redis one's.

    Raises:
        LedgerSpecError: ``spec`` is none of the accepted forms, names an unset variable, or a bad URL.
        ImportError: redis-py is missing (``pip install autogen-capacity[redis]``).
    """
    spec = spec.strip()
    if spec.startswith("{"):
        try:
            config = LedgerConfig.model_validate_json(spec)
        except ValidationError as e:
            raise LedgerSpecError(f"not a ledger config: {e.errors()[0]['msg']}") from None
        if config.provider == "memory":
            return _memory()
        try:
            url = config.redis_url()
        except ValueError as e:
            raise LedgerSpecError(str(e)) from None
        return _redis(url, namespace or config.namespace or DEFAULT_NAMESPACE)
    if spec == "memory":
        return _memory()
    if urlsplit(spec).scheme in _URL_SCHEMES:
        return _redis(spec, namespace or DEFAULT_NAMESPACE)
    if _ENV_NAME.fullmatch(spec):
        url = os.environ.get(spec, "").strip()
        if not url:
            raise LedgerSpecError(
                f"the environment variable {spec} is not set (set it to e.g. redis://localhost:6379/0)"
            )
        if urlsplit(url).scheme not in _URL_SCHEMES:
            raise LedgerSpecError(f"the environment variable {spec} does not hold a Redis URL")
        return _redis(url, namespace or DEFAULT_NAMESPACE)
    raise LedgerSpecError(
        f"unknown ledger {spec!r}: give memory, a redis:// URL, the name of an environment variable holding one, "
        "or a ledger config as JSON"
    )


def _memory() -> Watched:
    return Watched(InMemoryLedger(), "memory", None, MEMORY_NOTE)


def _redis(url: str, namespace: str) -> Watched:
    from .ledger.redis import RedisLedger

    try:
        ledger = RedisLedger(url, namespace=namespace)
    except ValueError as e:
        raise LedgerSpecError(f"not a usable Redis URL: {e}") from None
    return Watched(ledger, _redact(url), namespace)


def _redact(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2], query=""))


def snapshot_to_dict(watched: Watched, snapshot: LedgerSnapshot) -> dict[str, Any]:
    """The JSON the command prints: the ledger, its namespace and each key's usage (seconds left as floats)."""
    data: dict[str, Any] = {
        "ledger": watched.name,
        "namespace": watched.namespace,
        "keys": {key: asdict(usage) for key, usage in sorted(snapshot.items())},
    }
    if watched.note is not None:
        data["note"] = watched.note
    return data


def render(watched: Watched, snapshot: LedgerSnapshot, *, error: str | None = None) -> RenderableType:
    """The live view: one row per key."""
    title = f"{watched.name}" + (f" namespace {watched.namespace!r}" if watched.namespace else "")
    table = Table(title=f"{title} at {time.strftime('%H:%M:%S')}: {len(snapshot)} key(s)")
    for column in ("key", "in flight", "waiting", "acquired", "tpm use", "cooling down", "exhausted"):
        table.add_column(column, justify="left" if column == "key" else "right")
    for key, usage in sorted(snapshot.items()):
        table.add_row(
            key,
            str(usage.in_flight),
            str(usage.waiting),
            str(usage.acquired),
            str(usage.tokens_last_minute),
            _left(usage.cooling_down_for),
            _left(usage.exhausted_for),
        )
    notes = [Text(n, style="dim") for n in (watched.note,) if n]
    if error is not None:
        notes.append(Text(f"cannot read the ledger: {error}", style="bold red"))
    return Group(table, *notes)


def _left(seconds: float) -> str:
    return f"{seconds:.1f}s left" if seconds > 0 else "-"


async def watch(
    watched: Watched, show: Callable[[LedgerSnapshot, str | None], None], *, interval_s: float, once: bool
) -> None:
    """Read the ledger's snapshot every ``interval_s`` and ``show`` it (with the error when a read fails,
    after the first one: a blip does not end a live view).

    Raises:
        LedgerUnavailable: the first read failed (or, with ``once``, the only one).
    """
    try:
        last = await watched.ledger.snapshot()
        show(last, None)
        while not once:
            await asyncio.sleep(interval_s)
            try:
                last = await watched.ledger.snapshot()
            except Exception as e:
                show(last, f"{type(e).__name__}: {e}")
            else:
                show(last, None)
    finally:
        await watched.ledger.aclose()
