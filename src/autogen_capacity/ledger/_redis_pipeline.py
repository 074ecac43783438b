"""Auto-pipelining for the Redis ledger: scripts go to Redis in batches (one write, one round trip each), so
many teams sharing a ledger cost few round trips and little client CPU. A lone call goes out at once.

Every script is idempotent for its arguments (ids are made by the client), so a batch that met a lost
connection is sent again, with a backoff, until it lands or the retry window is over. Calls of a shared script (a
read whose writes are the same run once or twice) with the same keys and arguments in one batch (teams reading
the same key's status at once) run once and share the reply: they are concurrent, so any order of them among the
batch's other calls is one they could have had."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from .._logging import logger

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

__all__ = ["OnOrphan", "ScriptPipeline", "retrying"]

OnOrphan = Callable[[Any], Awaitable[None]]
"""Undoes what a script did that its caller will never learn of: called with the reply when the caller was cancelled
while the script was on the way, and with ``None`` when the script's batch failed (it may have run, its reply lost)."""

T = TypeVar("T")
RETRY_FIRST_S = 0.02
RETRY_CAP_S = 0.5


async def retrying(
    attempt: Callable[[], Awaitable[T]],
    *,
    within: float,
    unreachable: tuple[type[Exception], ...],
    on_reconnect: Callable[[], None] = lambda: None,
) -> T:
    """Run ``attempt`` until it does not fail with ``unreachable``, backing off (full jitter, 20 ms doubling up to
    0.5 s), for at most ``within`` seconds; then let the last error through. ``on_reconnect`` is called when an
    attempt succeeds after a failure."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    failures = 0
    while True:
        try:
            result = await attempt()
        except unreachable:
            failures += 1
            delay = random.uniform(0, min(RETRY_FIRST_S * 2**failures, RETRY_CAP_S))
            if loop.time() + delay >= deadline:
                raise
            await asyncio.sleep(delay)
            continue
        if failures:
            on_reconnect()
        return result


class _Call:
    __slots__ = ("args", "future", "keys", "on_orphan", "script")

    def __init__(
        self,
        script: AsyncScript,
        keys: Sequence[str],
        args: Sequence[str | float],
        future: asyncio.Future[Any],
        on_orphan: OnOrphan | None,
    ) -> None:
        self.script = script
        self.keys = keys
        self.args = args
        self.future = future
        self.on_orphan = on_orphan


class ScriptPipeline:
    """Runs Lua scripts in batches, one batch on the way at a time: the calls made while a batch is on its
    way (or before the sender first runs) go together in the next one, so batches grow with the load.

    A script Redis no longer knows (a restart, ``SCRIPT FLUSH``) is loaded again and its calls are retried
    once. An error of one script is that call's. A lost connection sends the batch again for up to
    ``retry_for`` seconds (``on_reconnect`` is called once it lands); past that, every call of the batch fails.
    Identical calls of the scripts in ``shared`` (their SHA1s: reads, so that one run answers all) go to Redis
    once a batch. A batch that failed may have run in Redis with its replies lost: each of its calls' ``on_orphan``
    is called with ``None``, and ``on_reconnect`` once a later batch lands.
    """

    def __init__(
        self,
        client: Redis,
        *,
        retry_for: float = 0.0,
        unreachable: tuple[type[Exception], ...] = (),
        on_reconnect: Callable[[], None] = lambda: None,
        shared: frozenset[str] = frozenset(),
    ) -> None:
        from redis.exceptions import NoScriptError

        self._client = client
        self._retry_for = retry_for
        self._unreachable = unreachable
        self._on_reconnect = on_reconnect
        self._shared = shared
        self._no_script = NoScriptError
        self._pending: list[_Call] = []
        self._sender: asyncio.Task[None] | None = None
        self._orphans: set[asyncio.Task[None]] = set()
        self._lost = False  # a batch failed: the next one that lands says Redis is back

    async def run(
        self,
        script: AsyncScript,
        keys: Sequence[str],
        args: Sequence[str | float],
        *,
        on_orphan: OnOrphan | None = None,
    ) -> Any:
        """Run ``script`` in the next batch and return its reply.

        A caller cancelled before its batch leaves is dropped from it. One cancelled once its script is on the
        way does not stop the script: the reply goes to ``on_orphan`` instead (awaited by :meth:`drain`). When the
        batch fails (Redis unreachable), ``on_orphan`` is called with ``None`` as well: the script may have run.
        """
        future = self.submit(script, keys, args, on_orphan=on_orphan)
        try:
            return await future
        except asyncio.CancelledError:
            # Cancelled in the same turn of the loop as its reply arrived: the reply is the orphan's.
            if on_orphan is not None and future.done() and not future.cancelled() and future.exception() is None:
                self.detach(on_orphan(future.result()))
            raise

    def submit(
        self,
        script: AsyncScript,
        keys: Sequence[str],
        args: Sequence[str | float],
        *,
        on_orphan: OnOrphan | None = None,
    ) -> asyncio.Future[Any]:
        """Put ``script`` in the next batch now, ahead of every script submitted after it: the future is resolved
        with its reply (or its error)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append(_Call(script, keys, args, future, on_orphan))
        if self._sender is None:
            self._sender = loop.create_task(self._send_all())
        return future

    async def drain(self) -> None:
        """Wait until every batch on its way, and every detached handler, has finished (being cancelled does not
        cancel them)."""
        while running := {task for task in (self._sender, *self._orphans) if task is not None}:
            await asyncio.wait(running)

    async def landed(self) -> None:
        """Wait until the handlers detached so far have finished (not for later ones, nor for other batches)."""
        if self._orphans:
            await asyncio.wait(set(self._orphans))

    def detach(self, handler: Awaitable[None]) -> None:
        """Run ``handler`` (scripts whose replies nobody waits for) in the background: its failure is logged, and
        :meth:`drain` and :meth:`landed` wait for it."""
        orphan = asyncio.ensure_future(handler)
        self._orphans.add(orphan)
        orphan.add_done_callback(self._orphan_done)

    def _orphan_done(self, orphan: asyncio.Task[None]) -> None:
        self._orphans.discard(orphan)
        if not orphan.cancelled() and (error := orphan.exception()) is not None:
            logger.warning("autogen_capacity.orphan_failed", error=f"{type(error).__name__}: {error}")

    async def _send_all(self) -> None:
        try:
            while self._pending:
                batch, self._pending = [c for c in self._pending if not c.future.cancelled()], []
                if batch:
                    await self._send(batch)
        finally:
            self._sender = None
            for call in self._pending:  # only when the sender itself was cancelled
                call.future.cancel()
            self._pending.clear()

    async def _send(self, batch: Sequence[_Call]) -> None:
        try:
            replies = await retrying(
                lambda: self._execute(batch),
                within=self._retry_for,
                unreachable=self._unreachable,
                on_reconnect=self._on_reconnect,
            )
        except BaseException as exc:  # Redis unreachable, or the loop is shutting down
            for call in batch:
                if isinstance(exc, Exception) and call.on_orphan is not None:  # it may have run, its reply lost
                    self.detach(call.on_orphan(None))
                if call.future.done():
                    continue
                if isinstance(exc, Exception):
                    call.future.set_exception(exc)
                else:
                    call.future.cancel()
            if not isinstance(exc, Exception):
                raise
            self._lost = True
            return
        if self._lost:
            self._lost = False
            self._on_reconnect()
        for call, reply in zip(batch, replies, strict=True):
            if not call.future.cancelled():
                if isinstance(reply, Exception):
                    call.future.set_exception(reply)
                else:
                    call.future.set_result(reply)
            elif call.on_orphan is not None and not isinstance(reply, Exception):
                self.detach(call.on_orphan(reply))

    async def _execute(self, batch: Sequence[_Call]) -> list[Any]:
        replies = await self._pipeline(batch)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, self._no_script)]
        if missing:  # only these calls depend on the reload; the others keep their replies
            calls = [batch[i] for i in missing]
            try:
                again = await retrying(
                    lambda: self._reload(calls), within=self._retry_for, unreachable=self._unreachable
                )
            except Exception as exc:
                again = [exc] * len(missing)
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    async def _reload(self, calls: Sequence[_Call]) -> list[Any]:
        for script in {call.script.sha: call.script for call in calls}.values():
            await self._client.script_load(script.script)
        return await self._pipeline(calls)

    async def _pipeline(self, calls: Sequence[_Call]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        queued: dict[tuple[Any, ...], int] = {}  # a call of a shared script -> its run in the pipeline
        runs: list[int] = []  # each call's run
        sent = 0
        for call in calls:
            sha = call.script.sha
            same = (sha, *call.keys, None, *call.args) if sha in self._shared else None
            if same is not None and (run := queued.get(same)) is not None:
                runs.append(run)
                continue
            run = sent
            sent += 1
            if same is not None:
                queued[same] = run
            runs.append(run)
            pipe.evalsha(sha, len(call.keys), *call.keys, *call.args)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        return [replies[run] for run in runs]
