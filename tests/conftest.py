"""Shared fixtures."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from autogen_core import SingleThreadedAgentRuntime

from autogen_capacity import InMemoryLedger
from autogen_capacity.testing import FakeLoopClock
from redis_server import make_ledger_fixture, redis_server_fixture  # noqa: F401  (registers the fixtures)


@pytest.fixture(name="fake_clock")
async def _fake_clock() -> AsyncIterator[FakeLoopClock]:
    """The running loop's clock, frozen until the test advances it."""
    with FakeLoopClock(start=1000.0) as clock:
        yield clock


@pytest.fixture(name="ledger")
async def _ledger() -> AsyncIterator[InMemoryLedger]:
    """A fresh in-process ledger, closed after the test."""
    ledger = InMemoryLedger()
    yield ledger
    await ledger.aclose()


@pytest.fixture(name="runtime", params=["embedded", "single_threaded"])
async def _runtime(request: pytest.FixtureRequest) -> AsyncIterator[SingleThreadedAgentRuntime | None]:
    """Both of AutoGen's ways to run a team: its own embedded runtime (``None``), or a shared, started
    ``SingleThreadedAgentRuntime``."""
    if request.param == "embedded":
        yield None
        return
    runtime = SingleThreadedAgentRuntime()
    runtime.start()
    yield runtime
    await runtime.stop()
