"""Several worker processes, one limit: teams in separate processes share a contract through Redis.

Three worker processes (multiprocessing, spawn) each run six CapacityAwareGroupChat runs at once. Every
member calls the same scripted backend, declared once as ``AgentCapacity(key="backend", max_concurrent=3)``.
With the in-process ledger each process would allow 3, so 9 at once (limit x replicas); with the Redis
ledger the three processes together never exceed 3. The peak is measured independently of the ledger, by
a counter in shared memory that every backend call increments while it runs.

The Redis URL comes from AUTOGEN_CAPACITY_REDIS_URL. When it is unset, the example starts a throwaway
redis-server on a free port (if the binary is installed), else it says so and exits. Needs redis-py:
``pip install autogen-capacity[redis]``.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from multiprocessing.sharedctypes import Synchronized
from typing import Any

from autogen_agentchat.agents import BaseChatAgent
from autogen_agentchat.base import Response
from autogen_agentchat.messages import BaseChatMessage, TextMessage
from autogen_core import CancellationToken

from autogen_capacity import AgentCapacity, CapacityAwareGroupChat, LedgerConfig, ledger_from_config

URL_ENV = "AUTOGEN_CAPACITY_REDIS_URL"
WORKERS = 3
RUNS_PER_WORKER = 6
LIMIT = 3
CALL_S = 0.05
BACKEND = AgentCapacity(
    key="backend", max_concurrent=LIMIT, backoff_initial_ms=100, backoff_ceiling_ms=1000, max_caller_retries=10
)


class Gauge:
    """Backend calls in flight across every process, and the peak: shared memory, not the ledger."""

    def __init__(self, ctx: Any) -> None:
        self.lock = ctx.Lock()
        self.now: Synchronized[int] = ctx.Value("i", 0, lock=False)
        self.peak: Synchronized[int] = ctx.Value("i", 0, lock=False)
        self.calls: Synchronized[int] = ctx.Value("i", 0, lock=False)

    def enter(self) -> None:
        with self.lock:
            self.now.value += 1
            self.calls.value += 1
            self.peak.value = max(self.peak.value, self.now.value)

    def leave(self) -> None:
        with self.lock:
            self.now.value -= 1


class BackendCaller(BaseChatAgent):
    """A scripted member: each turn is one call to the shared backend, taking ``CALL_S`` seconds."""

    def __init__(self, name: str, gauge: Gauge) -> None:
        super().__init__(name, description=f"{name} calls the shared backend.")
        self._gauge = gauge

    @property
    def produced_message_types(self) -> Sequence[type[BaseChatMessage]]:
        return (TextMessage,)

    async def on_messages(self, messages: Sequence[BaseChatMessage], cancellation_token: CancellationToken) -> Response:
        self._gauge.enter()
        try:
            await asyncio.sleep(CALL_S)
        finally:
            self._gauge.leave()
        return Response(chat_message=TextMessage(content=f"{self.name}: done", source=self.name))

    async def on_reset(self, cancellation_token: CancellationToken) -> None:
        pass


async def run_worker(worker: int, namespace: str, gauge: Gauge) -> list[str]:
    # The URL is read from the environment variable named in the config: no URL in code or config.
    ledger = ledger_from_config(LedgerConfig(provider="redis", url_env=URL_ENV, namespace=namespace))
    try:

        async def one_run(run: int) -> str:
            members = [BackendCaller("drafter", gauge), BackendCaller("reviewer", gauge)]
            team = CapacityAwareGroupChat(
                members,
                name=f"worker{worker}-run{run}",
                capacities={"drafter": BACKEND, "reviewer": BACKEND},
                routing="round_robin",
                ledger=ledger,
                max_turns=2,
            )
            result = await team.run(task="Write and review one line.")
            return result.stop_reason or ""

        return list(await asyncio.gather(*(one_run(run) for run in range(RUNS_PER_WORKER))))
    finally:
        await ledger.aclose()


def worker_main(worker: int, namespace: str, gauge: Gauge, results: Any) -> None:
    for reason in asyncio.run(run_worker(worker, namespace, gauge)):
        results.put(reason)


@contextmanager
def throwaway_redis(binary: str) -> Iterator[str]:
    """A redis-server on a free local port, without persistence, stopped on exit."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="redis-workers-") as directory:
        args = [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", directory, "--save", ""]
        process = subprocess.Popen(
            [*args, "--appendonly", "no", "--loglevel", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
                        conn.sendall(b"PING\r\n")
                        if conn.recv(16).startswith(b"+PONG"):
                            break
                except OSError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {port}")
                time.sleep(0.02)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait(timeout=10)


def run_all() -> int:
    ctx = multiprocessing.get_context("spawn")
    gauge, results = Gauge(ctx), ctx.Queue()
    namespace = f"redis-workers-{uuid.uuid4().hex[:8]}"  # a fresh namespace: reruns do not mix
    print(f"ledger config (no URL in it): {LedgerConfig(provider='redis', namespace=namespace).model_dump_json()}")
    started = time.monotonic()
    processes = [ctx.Process(target=worker_main, args=(worker, namespace, gauge, results)) for worker in range(WORKERS)]
    for process in processes:
        process.start()
    reasons = [results.get(timeout=120) for _ in range(WORKERS * RUNS_PER_WORKER)]
    for process in processes:
        process.join(timeout=30)
    failed = [p.exitcode for p in processes if p.exitcode != 0]
    exhausted = sum(reason.startswith("Capacity exhausted") for reason in reasons)
    print(f"{WORKERS} processes x {RUNS_PER_WORKER} team runs: {len(reasons)} runs ended, {exhausted} exhausted")
    print(f"backend calls: {gauge.calls.value} in {time.monotonic() - started:.1f} s")
    print(f"peak backend calls in flight, measured in shared memory: {gauge.peak.value} (limit {LIMIT})")
    print(f"with a ledger per process the limit would have been {LIMIT} x {WORKERS} = {LIMIT * WORKERS}")
    if failed or gauge.peak.value > LIMIT:
        print(f"FAILED: worker exit codes {failed}, peak {gauge.peak.value} > limit {LIMIT}?", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    try:
        import redis  # noqa: F401
    except ImportError:
        print("This example needs redis-py: pip install autogen-capacity[redis]")
        return 0
    if os.environ.get(URL_ENV):
        return run_all()  # the workers inherit the variable
    binary = shutil.which("redis-server")
    if binary is None:
        print(f"Set {URL_ENV} to a Redis URL (e.g. redis://localhost:6379/0), or install redis-server.")
        return 0
    with throwaway_redis(binary) as url:
        os.environ[URL_ENV] = url  # inherited by the spawned workers
        print(f"{URL_ENV} is unset: started a throwaway redis-server at {url}")
        return run_all()


if __name__ == "__main__":
    sys.exit(main())
