"""Auto-pipelining for the Redis ledger: scripts go to Redis in batches (one write, one round trip each), so
many teams sharing a ledger cost few round trips and little client CPU. A lone call goes out at once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from .._logging import logger

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

__all__ = ["OnOrphan", "ScriptPipeline"]

OnOrphan = Callable[[Any], Awaitable[None]]
"""Called with a reply whose caller was cancelled while its script was on the way (to undo what it did)."""


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
    once. An error of one script is that call's; an unreachable Redis fails every call of the batch.
    """

    def __init__(self, client: Redis) -> None:
        from redis.exceptions import NoScriptError

        self._client = client
        self._no_script = NoScriptError
        self._pending: list[_Call] = []
        self._sender: asyncio.Task[None] | None = None
        self._orphans: set[asyncio.Task[None]] = set()

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
        way does not stop the script: the reply goes to ``on_orphan`` instead (awaited by :meth:`drain`).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append(_Call(script, keys, args, future, on_orphan))
        if self._sender is None:
            self._sender = loop.create_task(self._send_all())
        try:
            return await future
        except asyncio.CancelledError:
            # Cancelled in the same turn of the loop as its reply arrived: the reply is the orphan's.
            if on_orphan is not None and future.done() and not future.cancelled() and future.exception() is None:
                self._adopt(on_orphan(future.result()))
            raise

    async def drain(self) -> None:
        """Wait until every batch on its way, and every orphan handler, has finished (being cancelled does not
        cancel them)."""
        while running := {task for task in (self._sender, *self._orphans) if task is not None}:
            await asyncio.wait(running)

    def _adopt(self, handler: Awaitable[None]) -> None:
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
            replies = await self._execute(batch)
        except BaseException as exc:  # Redis unreachable, or the loop is shutting down
            for call in batch:
                if call.future.done():
                    continue
                if isinstance(exc, Exception):
                    call.future.set_exception(exc)
                else:
                    call.future.cancel()
            if not isinstance(exc, Exception):
                raise
            return
        for call, reply in zip(batch, replies, strict=True):
            if not call.future.cancelled():
                if isinstance(reply, Exception):
                    call.future.set_exception(reply)
                else:
                    call.future.set_result(reply)
            elif call.on_orphan is not None and not isinstance(reply, Exception):
                self._adopt(call.on_orphan(reply))

    async def _execute(self, batch: Sequence[_Call]) -> list[Any]:
        replies = await self._pipeline(batch)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, self._no_script)]
        if missing:  # only these calls depend on the reload; the others keep their replies
            try:
                for script in {batch[i].script.sha: batch[i].script for i in missing}.values():
                    await self._client.script_load(script.script)
                again = await self._pipeline([batch[i] for i in missing])
            except Exception as exc:
                again = [exc] * len(missing)
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    async def _pipeline(self, calls: Sequence[_Call]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for call in calls:
            pipe.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies
