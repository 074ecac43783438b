"""``autogen-capacity status LEDGER``: the ledger spec, the view, and the installed command against a real Redis."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from autogen_capacity import AgentCapacity, InMemoryLedger, KeyUsage
from autogen_capacity.cli import main
from autogen_capacity.ledger.redis import RedisLedger
from autogen_capacity.status import LedgerSpecError, Watched, open_ledger, render, snapshot_to_dict, watch
from redis_server import REDIS_SERVER, RedisServer

COMMAND = Path(sys.executable).parent / "autogen-capacity"
"""The console script pip installed next to this interpreter: the command as users run it."""


def run(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(COMMAND), *args], capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}
    )


def assert_one_clean_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


class TestLedgerSpec:
    @pytest.mark.parametrize("spec", ["memory", " memory ", '{"provider": "memory"}'])
    async def test_memory_is_an_empty_in_process_ledger(self, spec: str) -> None:
        """memory opens an in-process ledger, with a note that it shows nothing of another process."""
        watched = open_ledger(spec)
        assert isinstance(watched.ledger, InMemoryLedger)
        assert watched.note is not None
        await watched.ledger.aclose()

    @pytest.mark.parametrize(
        ("spec", "env"),
        [
            ("redis://user:secret@127.0.0.1:6379/0?password=secret", {}),
            ("MY_REDIS", {"MY_REDIS": "redis://user:secret@127.0.0.1:6379/0"}),
            ('{"provider": "redis", "url_env": "MY_REDIS"}', {"MY_REDIS": "redis://:secret@127.0.0.1:6379/0"}),
        ],
    )
    async def test_redis_by_url_variable_or_config(
        self, spec: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A Redis URL, a variable holding one, or a ledger config open a RedisLedger named without secrets."""
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        watched = open_ledger(spec, namespace="ns")
        assert isinstance(watched.ledger, RedisLedger)
        assert watched.name == "redis://127.0.0.1:6379/0"
        assert watched.namespace == "ns"
        await watched.ledger.aclose()

    async def test_a_configs_namespace_is_kept(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("MY_REDIS", "redis://127.0.0.1:6379/0")
        watched = open_ledger('{"provider": "redis", "url_env": "MY_REDIS", "namespace": "prod"}')
        assert watched.namespace == "prod"
        await watched.ledger.aclose()

    @pytest.mark.parametrize(
        ("spec", "message"),
        [
            ("bogus://x", "unknown ledger 'bogus://x'"),
            ("not a name", "unknown ledger"),
            ("UNSET_VARIABLE_FOR_TEST", "UNSET_VARIABLE_FOR_TEST is not set"),
            ("HOME_NOT_A_URL", "does not hold a Redis URL"),
            ('{"provider": "mongo"}', "not a ledger config"),
            ('{"provider": "redis", "url_env": "UNSET_VARIABLE_FOR_TEST"}', "UNSET_VARIABLE_FOR_TEST"),
            ("redis://127.0.0.1:notaport/0", "not a usable Redis URL"),
        ],
    )
    def test_what_it_cannot_open_is_named(self, spec: str, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
        """Each spec it cannot read fails with a message that says what was wrong."""
        monkeypatch.delenv("UNSET_VARIABLE_FOR_TEST", raising=False)
        monkeypatch.setenv("HOME_NOT_A_URL", "/home/me")
        with pytest.raises(LedgerSpecError, match=message):
            open_ledger(spec)


SNAPSHOT = {
    "b": KeyUsage(0, acquired=7, cooling_down_for=2.04),
    "a": KeyUsage(2, waiting=1, acquired=9, tokens_last_minute=1200, exhausted_for=299.5),
}


class TestView:
    def test_the_table_shows_every_key_and_time_left(self) -> None:
        """One row a key, sorted, with the seconds a cooldown or an exhausted mark has left."""
        console = Console(record=True, width=200)
        console.print(render(Watched(InMemoryLedger(), "memory", None), SNAPSHOT, error="down"))
        text = console.export_text()
        assert text.index("│ a ") < text.index("│ b ")
        assert "2.0s left" in text
        assert "299.5s left" in text
        assert "1200" in text
        assert "cannot read the ledger: down" in text

    def test_json_has_each_keys_usage(self) -> None:
        data = snapshot_to_dict(Watched(InMemoryLedger(), "redis://h:1/0", "ns"), SNAPSHOT)
        assert list(data["keys"]) == ["a", "b"]
        assert data["keys"]["a"] == {
            "in_flight": 2,
            "waiting": 1,
            "acquired": 9,
            "tokens_last_minute": 1200,
            "cooling_down_for": 0.0,
            "exhausted_for": 299.5,
            "live_limit": None,
            "ceiling": None,
            "limit_steady_for": None,
            "overload_rate": 0.0,
        }
        assert (data["ledger"], data["namespace"]) == ("redis://h:1/0", "ns")
        assert "note" not in data


class Flaky(InMemoryLedger):
    """Fails its second snapshot."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.closed = False

    async def aclose(self) -> None:
        self.closed = True
        await super().aclose()

    async def snapshot(self) -> Mapping[str, KeyUsage]:
        self.reads += 1
        if self.reads == 2:
            raise ConnectionError("blip")
        return await super().snapshot()


class Enough(Exception):
    pass


class TestWatch:
    async def test_a_failed_read_is_shown_and_the_view_goes_on(self) -> None:
        """A blip shows the last snapshot with the error; the next read clears it; the ledger is closed after."""
        ledger = Flaky()
        shown: list[tuple[int, str | None]] = []

        def show(snapshot: Mapping[str, KeyUsage], error: str | None) -> None:
            shown.append((len(snapshot), error))
            if len(shown) == 3:
                raise Enough

        with pytest.raises(Enough):
            await watch(Watched(ledger, "memory", None), show, interval_s=0.001, once=False)
        assert shown == [(0, None), (0, "ConnectionError: blip"), (0, None)]
        assert ledger.closed


class Interrupted(InMemoryLedger):
    """Its second snapshot plays the user's Ctrl-C."""

    reads = 0

    async def snapshot(self) -> Mapping[str, KeyUsage]:
        Interrupted.reads += 1
        if Interrupted.reads == 2:
            raise KeyboardInterrupt
        return await super().snapshot()


class TestLiveInProcess:
    """The live modes loop until Ctrl-C. ``main`` runs in a worker thread, as its own ``asyncio.run`` would in a
    process of its own (the test's loop is left alone)."""

    @pytest.fixture(autouse=True)
    def _ctrl_c_at_second_read(self, monkeypatch: pytest.MonkeyPatch) -> None:
        Interrupted.reads = 0
        monkeypatch.setattr("autogen_capacity.status.InMemoryLedger", Interrupted)

    async def test_live_table_until_ctrl_c(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert await asyncio.to_thread(main, ["status", "memory", "--interval", "0.001"]) == 130
        assert "in flight" in capsys.readouterr().out

    async def test_json_lines_until_ctrl_c(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Without --once, --json prints one JSON document a line, a refresh each."""
        assert await asyncio.to_thread(main, ["status", "memory", "--json", "--interval", "0.001"]) == 130
        [line] = capsys.readouterr().out.splitlines()
        assert json.loads(line)["keys"] == {}


class TestCommand:
    def test_unknown_ledger_exits_2_with_one_line(self) -> None:
        """An unknown ledger spec is a user mistake: exit 2, one line on stderr, no traceback."""
        result = run("status", "bogus://nowhere", "--once", "--json")
        assert result.returncode == 2
        assert result.stdout == ""
        assert assert_one_clean_line(result).startswith("autogen-capacity: unknown ledger 'bogus://nowhere'")

    def test_bad_interval_is_refused(self) -> None:
        result = run("status", "memory", "--interval", "0")
        assert result.returncode == 2
        assert "must be more than 0" in result.stderr

    def test_unreachable_redis_exits_1_with_one_line(self) -> None:
        from redis_server import free_port

        result = run("status", f"redis://127.0.0.1:{free_port()}/0", "--once")
        assert result.returncode == 1
        assert "cannot read redis://127.0.0.1:" in assert_one_clean_line(result)

    def test_memory_once_shows_nothing(self) -> None:
        result = run("status", "memory", "--once", "--json")
        assert result.returncode == 0
        assert json.loads(result.stdout)["keys"] == {}

    @pytest.mark.redis
    @pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server binary not found")
    async def test_once_json_shows_the_leases_held_and_changes_nothing(self, redis_server: RedisServer) -> None:
        """Against a real Redis with leases held, a cooldown and tokens recorded, the command shows them all,
        read by URL or through a variable, and the ledger reads the same afterwards."""
        namespace = f"status-{uuid.uuid4().hex[:8]}"
        ledger = RedisLedger(redis_server.url, namespace=namespace)
        contract = AgentCapacity(max_concurrent=3, tpm=10_000)
        try:
            leases = [await ledger.try_acquire("alpha", contract) for _ in range(2)]
            await ledger.record_tokens("alpha", 321)
            await ledger.cooldown("beta", 30)
            before = await ledger.snapshot()

            by_url = await asyncio.to_thread(
                run, "status", redis_server.url, "--namespace", namespace, "--once", "--json"
            )
            by_env = await asyncio.to_thread(
                run, "status", "STATUS_TEST_URL", "--namespace", namespace, "--once", "--json",
                env={"STATUS_TEST_URL": redis_server.url},
            )  # fmt: skip
            table = await asyncio.to_thread(run, "status", redis_server.url, "--namespace", namespace, "--once")
            after = await ledger.snapshot()
        finally:
            for lease in leases:
                assert lease is not None
                await lease.release()
            await ledger.aclose()
        for result in (by_url, by_env, table):
            assert result.returncode == 0, result.stderr
        for result in (by_url, by_env):
            data: dict[str, Any] = json.loads(result.stdout)
            assert data["ledger"] == redis_server.url
            assert data["namespace"] == namespace
            alpha, beta = data["keys"]["alpha"], data["keys"]["beta"]
            assert (alpha["in_flight"], alpha["acquired"], alpha["tokens_last_minute"]) == (2, 2, 321)
            assert 0 < beta["cooling_down_for"] <= 30
        assert "alpha" in table.stdout
        assert "s left" in table.stdout
        assert {k: (u.in_flight, u.acquired, u.tokens_last_minute) for k, u in after.items()} == {
            k: (u.in_flight, u.acquired, u.tokens_last_minute) for k, u in before.items()
        }


class TestExitStatusInProcess:
    """The same exit statuses through ``main`` (run in a worker thread, with its own ``asyncio.run``)."""

    async def test_unknown_ledger(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert await asyncio.to_thread(main, ["status", "nowhere://", "--once"]) == 2
        assert capsys.readouterr().err.startswith("autogen-capacity: unknown ledger")

    async def test_once_table(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert await asyncio.to_thread(main, ["status", "memory", "--once"]) == 0
        assert "in flight" in capsys.readouterr().out

    async def test_unreachable(self, capsys: pytest.CaptureFixture[str]) -> None:
        from redis_server import free_port

        url = f"redis://127.0.0.1:{free_port()}/0"
        assert await asyncio.to_thread(main, ["status", url, "--once", "--json"]) == 1
        assert capsys.readouterr().err.startswith(f"autogen-capacity: cannot read {url}")
