"""The ledger named in a team's component config: a URL from the environment, never written into config."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from autogen_agentchat.base import Team
from pydantic import ValidationError

from autogen_capacity import (
    CapacityAwareGroupChat,
    CapacityAwareGroupChatConfig,
    InMemoryLedger,
    LedgerConfig,
    RedisLedger,
    default_ledger,
    ledger_from_config,
)
from autogen_capacity.ledger import ledger_config_of
from configs import agent, team
from redis_server import RedisServer, redis_server_fixture  # noqa: F401  (registers the fixture)

URL_ENV = "AUTOGEN_CAPACITY_TEST_REDIS_URL"
SECRET = "s3cret-password"


def redis_team_config(namespace: str, **ledger: Any) -> dict[str, Any]:
    """A team component config whose ledger is Redis, its URL read from ``URL_ENV``."""
    ledger_config = {"provider": "redis", "url_env": URL_ENV, "namespace": namespace, **ledger}
    return team(
        "writers",
        [agent("a"), agent("b")],
        capacities={"a": {"max_concurrent": 1}},
        max_turns=2,
        ledger=ledger_config,
    )


@pytest.fixture(name="namespace")
def _namespace() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(name="redis_url")
async def _redis_url(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    """The server's URL with a password in it (redis-server without requirepass accepts any), in ``URL_ENV``;
    every ledger built from config on this loop is closed after the test."""
    pytest.importorskip("redis", reason="redis-py is not installed (pip install autogen-capacity[redis])")
    url = f"redis://default:{SECRET}@127.0.0.1:{redis_server.port}/0"
    monkeypatch.setenv(URL_ENV, url)
    yield url
    from autogen_capacity.ledger import config as config_module

    for ledger in config_module._shared.get(asyncio.get_running_loop(), {}).values():
        await ledger.aclose()


class TestLedgerConfig:
    def test_redis_defaults_are_filled_in(self) -> None:
        """A bare Redis provider reads AUTOGEN_CAPACITY_REDIS_URL, namespace autogen_capacity, 30 s leases."""
        config = LedgerConfig(provider="redis")
        assert config.model_dump() == {
            "provider": "redis",
            "url_env": "AUTOGEN_CAPACITY_REDIS_URL",
            "namespace": "autogen_capacity",
            "lease_ttl_s": 30.0,
        }

    def test_memory_dumps_bare(self) -> None:
        """The memory provider dumps as {"provider": "memory"} (the team dumps with exclude_none)."""
        assert LedgerConfig(provider="memory").model_dump(exclude_none=True) == {"provider": "memory"}

    @pytest.mark.parametrize(
        "raw",
        [
            {"provider": "memory", "namespace": "x"},
            {"provider": "redis", "url": "redis://localhost"},
            {"provider": "postgres"},
            {"provider": "redis", "lease_ttl_s": 0},
            {"provider": "redis", "url_env": ""},
        ],
    )
    def test_invalid(self, raw: dict[str, Any]) -> None:
        """Unknown fields (a literal URL included), Redis fields on memory, unknown providers are refused."""
        with pytest.raises(ValidationError):
            LedgerConfig.model_validate(raw)

    def test_frozen(self) -> None:
        """A LedgerConfig cannot be changed after it is built."""
        config = LedgerConfig(provider="redis")
        with pytest.raises(ValidationError):
            config.namespace = "other"  # type: ignore[misc]

    def test_missing_env_var_names_it(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Loading a team whose URL variable is unset fails at load, naming the variable."""
        monkeypatch.delenv(URL_ENV, raising=False)
        config = redis_team_config("ns")
        with pytest.raises(ValueError, match=URL_ENV):
            Team.load_component(config)

    def test_loads_without_a_loop_or_a_connection(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Loading needs no running loop and connects to nothing: the ledger is built on first use."""
        pytest.importorskip("redis", reason="redis-py is not installed (pip install autogen-capacity[redis])")
        monkeypatch.setenv(URL_ENV, f"redis://:{SECRET}@127.0.0.1:1/0")
        loaded = Team.load_component(redis_team_config("ns"))
        text = loaded.dump_component().model_dump_json()
        assert json.loads(text)["config"]["ledger"]["url_env"] == URL_ENV
        assert SECRET not in text

    async def test_empty_env_var_names_it(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """An empty variable counts as unset, in ledger_from_config too."""
        monkeypatch.setenv(URL_ENV, "  ")
        with pytest.raises(ValueError, match=URL_ENV):
            ledger_from_config(LedgerConfig(provider="redis", url_env=URL_ENV))


class TestDefault:
    async def test_no_ledger_config_is_the_in_process_default(self) -> None:
        """A team config without "ledger" loads with the default in-process ledger and dumps no ledger."""
        loaded = Team.load_component(team("t", [agent("a")]))
        assert isinstance(loaded, CapacityAwareGroupChat)
        assert loaded.ledger is default_ledger()
        assert "ledger" not in loaded.dump_component().config

    async def test_memory_provider_is_the_default_ledger(self) -> None:
        """{"provider": "memory"} loads the default ledger and round-trips."""
        loaded = Team.load_component(team("t", [agent("a")], ledger={"provider": "memory"}))
        assert isinstance(loaded, CapacityAwareGroupChat)
        assert loaded.ledger is default_ledger()
        assert loaded.dump_component().config["ledger"] == {"provider": "memory"}

    async def test_private_ledger_objects_are_not_dumped(self) -> None:
        """A private InMemoryLedger cannot be named in config; the default ledger object can."""
        from autogen_agentchat.agents import AssistantAgent
        from autogen_ext.models.replay import ReplayChatCompletionClient

        member = AssistantAgent("a", model_client=ReplayChatCompletionClient(["hi"]))
        private = CapacityAwareGroupChat([member], ledger=InMemoryLedger())
        assert "ledger" not in private.dump_component().config
        shared = CapacityAwareGroupChat([member], ledger=default_ledger())
        assert shared.dump_component().config["ledger"] == {"provider": "memory"}


@pytest.mark.redis
class TestRedisFromConfig:
    async def test_round_trip(self, redis_url: str, namespace: str) -> None:
        """dump -> load -> dump gives the same config, with the ledger named by its variable."""
        config = redis_team_config(namespace, lease_ttl_s=5.0)
        first = Team.load_component(config)
        dumped = first.dump_component()
        second = Team.load_component(dumped)
        assert second.dump_component().model_dump() == dumped.model_dump()
        assert dumped.config["ledger"] == {
            "provider": "redis",
            "url_env": URL_ENV,
            "namespace": namespace,
            "lease_ttl_s": 5.0,
        }
        assert CapacityAwareGroupChatConfig.model_validate(dumped.config).ledger == LedgerConfig(
            provider="redis", url_env=URL_ENV, namespace=namespace, lease_ttl_s=5.0
        )

    async def test_no_url_in_dumped_json(self, redis_url: str, namespace: str) -> None:
        """Neither the URL nor its password appear in the dumped JSON, for a loaded team or a team given a
        ledger built from a URL."""
        loaded = Team.load_component(redis_team_config(namespace))
        assert isinstance(loaded, CapacityAwareGroupChat)
        assert isinstance(loaded.ledger, RedisLedger)
        text = loaded.dump_component().model_dump_json()
        assert SECRET not in text
        assert "redis://" not in text
        assert URL_ENV in text

        direct = RedisLedger(redis_url, namespace=namespace)
        try:
            assert direct.config is None
            built = CapacityAwareGroupChat(list(loaded._participants), ledger=direct)
            text = built.dump_component().model_dump_json()
            assert SECRET not in text
            assert "redis://" not in text
            assert "ledger" not in built.dump_component().config
        finally:
            await direct.aclose()

    async def test_equal_configs_share_one_ledger_per_loop(self, redis_url: str, namespace: str) -> None:
        """Teams loaded from equal configs share one RedisLedger (one client, listener, renewal task)."""
        one = Team.load_component(redis_team_config(namespace))
        two = Team.load_component(redis_team_config(namespace))
        other = Team.load_component(redis_team_config(f"{namespace}-other"))
        assert isinstance(one, CapacityAwareGroupChat)
        assert isinstance(two, CapacityAwareGroupChat)
        assert isinstance(other, CapacityAwareGroupChat)
        assert one.ledger is two.ledger
        assert other.ledger is not one.ledger
        assert ledger_config_of(one.ledger) == LedgerConfig(provider="redis", url_env=URL_ENV, namespace=namespace)

    async def test_closed_shared_ledger_is_replaced(self, redis_url: str, namespace: str) -> None:
        """After aclose, the next use builds a fresh ledger rather than handing out a closed one."""
        config = LedgerConfig(provider="redis", url_env=URL_ENV, namespace=namespace)
        first = ledger_from_config(config)
        await first.aclose()
        second = ledger_from_config(config)
        assert second is not first
        assert isinstance(second, RedisLedger)
        assert not second.closed

    async def test_loaded_team_runs_on_redis(self, redis_url: str, namespace: str) -> None:
        """A loaded team records its leases in the named Redis namespace, and releases them all."""
        loaded = Team.load_component(redis_team_config(namespace))
        assert isinstance(loaded, CapacityAwareGroupChat)
        result = await loaded.run(task="go")
        assert len(result.messages) == 3
        usage = await loaded.ledger.snapshot()
        assert usage["a"].acquired >= 1
        assert all(u.in_flight == 0 for u in usage.values())
        probe = RedisLedger(redis_url, namespace=namespace)
        try:
            assert (await probe.snapshot())["a"].acquired == usage["a"].acquired
        finally:
            await probe.aclose()
