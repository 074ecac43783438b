"""A throwaway ``redis-server`` for tests: ``127.0.0.1``, a free port, a temporary directory, no persistence.

Use the ``redis_server`` fixture (``from tests.redis_server import redis_server_fixture`` in a test module,
or ``pytest_plugins = ["tests.redis_server"]``), or :func:`running_redis` directly. Tests that need it skip
with a clear reason when the binary is missing (``apt-get install redis-server``).
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from autogen_capacity import RedisLedger

__all__ = [
    "REDIS_SERVER",
    "MakeLedger",
    "RedisServer",
    "free_port",
    "make_ledger_fixture",
    "redis_server_fixture",
    "running_redis",
]

REDIS_SERVER = shutil.which("redis-server")
"""Path of the ``redis-server`` binary, or ``None`` when it is not installed."""

SKIP_REASON = "redis-server binary not found (apt-get install redis-server)"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One ``redis-server`` process on a fixed port that can be stopped and started again (data is lost)."""

    def __init__(self, port: int, directory: Path) -> None:
        self.port = port
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers PING."""
        assert REDIS_SERVER is not None, SKIP_REASON
        args = [REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.directory)]
        args += ["--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"]
        log = (self.directory / "redis.log").open("ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while not self._answers_ping():
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}; see {self.directory}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} did not answer PING within {timeout} s")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and wait for it to exit."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False


@contextmanager
def running_redis() -> Iterator[RedisServer]:
    """A started :class:`RedisServer` on a free port, stopped (and its directory removed) on exit."""
    with tempfile.TemporaryDirectory(prefix="autogen-capacity-redis-") as directory:
        server = RedisServer(free_port(), Path(directory))
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(name="redis_server", scope="module")
def redis_server_fixture() -> Iterator[RedisServer]:
    """A redis-server for the test module; skips the test when the binary is missing."""
    if REDIS_SERVER is None:
        pytest.skip(SKIP_REASON)
    with running_redis() as server:
        yield server


MakeLedger = Callable[..., "RedisLedger"]


@pytest.fixture(name="make_ledger")
async def make_ledger_fixture(redis_server: RedisServer) -> AsyncIterator[MakeLedger]:
    """Build ledgers (separate clients, as separate processes would have) sharing one fresh namespace; they are
    closed after the test."""
    from autogen_capacity import RedisLedger

    namespace = f"test-{uuid.uuid4().hex[:8]}"
    ledgers: list[RedisLedger] = []

    def make(**kwargs: Any) -> RedisLedger:
        kwargs.setdefault("namespace", namespace)
        ledger = RedisLedger(redis_server.url, **kwargs)
        ledgers.append(ledger)
        return ledger

    yield make
    for ledger in ledgers:
        await ledger.aclose()


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0, every: float = 0.05) -> None:
    """Poll ``check`` (a read of Redis, which has no wake source to await) until it holds, failing after a
    generous ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, f"condition not met within {timeout} s"
        await asyncio.sleep(every)
