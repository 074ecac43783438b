"""Issue 12, integration: the real ``openai`` SDK through autogen-ext's ``OpenAIChatCompletionClient`` drives
``AssistantAgent``s in ``CapacityAwareGroupChat`` teams against an OpenAI-compatible server on 127.0.0.1 that
enforces true limits (``tests/openai_server.py``).

The clients never retry (``max_retries=0``): the team retries by contract. Several teams run at once on one
ledger. No assertion is about time: each counts requests the server recorded.

"Inside a retry-after window" is judged against what the team knew. A 429 announces a window on the server;
requests the team had already admitted (leased) before it took that 429 in may still arrive inside it (they
were on the wire, or between their lease and their send); none admitted after it may. The ledger records when
each lease was granted and each cooldown written, so the check counts, for every announced window, the
requests that arrived in it after the team had recorded it, and compares them with the requests still in
flight at that moment.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest
from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.base import TaskResult
from autogen_ext.models.openai import OpenAIChatCompletionClient

from autogen_capacity import AgentCapacity, CapacityAwareGroupChat, InMemoryLedger
from autogen_capacity.ledger import KeyStatus, Lease
from openai_server import MODEL, MODEL_INFO, SNAPSHOT, Hint, ModelLimits, OpenAIServer, Served

TIMEOUT = 30.0
SPENT = "gpt-4o-spent"


class RecordingLedger(InMemoryLedger):
    """An :class:`InMemoryLedger` that records, per key, when each lease was granted and each cooldown or
    exhausted mark written (on the loop clock the server stamps arrivals with)."""

    def __init__(self) -> None:
        super().__init__()
        self.leases: dict[str, list[float]] = defaultdict(list)
        self.cooldowns: dict[str, list[tuple[float, float]]] = defaultdict(list)
        self.exhausted: dict[str, list[float]] = defaultdict(list)

    async def acquire_or_status(
        self, key: str, capacity: AgentCapacity, *, idle_only: bool = False
    ) -> Lease | KeyStatus:
        lease = await super().acquire_or_status(key, capacity, idle_only=idle_only)
        if isinstance(lease, Lease):
            self.leases[key].append(self._now())
        return lease

    async def cooldown(self, key: str, seconds: float) -> None:
        await super().cooldown(key, seconds)
        self.cooldowns[key].append((self._now(), seconds))

    async def mark_exhausted(self, key: str, seconds: float) -> None:
        await super().mark_exhausted(key, seconds)
        self.exhausted[key].append(self._now())


@pytest.fixture(name="recording_ledger")
async def _recording_ledger() -> AsyncIterator[RecordingLedger]:
    ledger = RecordingLedger()
    yield ledger
    await ledger.aclose()


Serve = Callable[[dict[str, ModelLimits]], Awaitable[OpenAIServer]]
Client = Callable[[OpenAIServer, str], OpenAIChatCompletionClient]


@pytest.fixture(name="serve")
async def _serve() -> AsyncIterator[Serve]:
    """Starts an :class:`OpenAIServer` on 127.0.0.1 with the given per-model limits; stops it after the test."""
    servers: list[OpenAIServer] = []

    async def start(models: dict[str, ModelLimits]) -> OpenAIServer:
        server = OpenAIServer(models)
        await server.__aenter__()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.__aexit__(None, None, None)


@pytest.fixture(name="client")
async def _client() -> AsyncIterator[Client]:
    """A real ``OpenAIChatCompletionClient`` for a model on a server, never retrying; closed after the test."""
    made: list[OpenAIChatCompletionClient] = []

    def make(server: OpenAIServer, model: str = MODEL) -> OpenAIChatCompletionClient:
        client = OpenAIChatCompletionClient(
            model=model, base_url=server.base_url, api_key="test", max_retries=0, model_info=MODEL_INFO
        )
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


def schedule(**limits: Any) -> AgentCapacity:
    """A contract with a short backoff schedule (the providers' hints here are longer than its steps)."""
    fields: dict[str, Any] = {
        "backoff_initial_ms": 10,
        "backoff_ceiling_ms": 40,
        "backoff_jitter": False,
        "max_caller_retries": 10,
        **limits,
    }
    return AgentCapacity.model_validate(fields)


def team(
    name: str,
    members: Sequence[tuple[str, OpenAIChatCompletionClient, AgentCapacity]],
    ledger: InMemoryLedger,
    max_turns: int,
) -> CapacityAwareGroupChat:
    agents = [
        AssistantAgent(member, model_client=client, description=f"The {member}.") for member, client, _ in members
    ]
    return CapacityAwareGroupChat(
        agents,
        name=name,
        capacities={member: contract for member, _, contract in members},
        ledger=ledger,
        max_turns=max_turns,
    )


async def run_all(teams: Sequence[CapacityAwareGroupChat]) -> list[TaskResult]:
    return list(await asyncio.wait_for(asyncio.gather(*(t.run(task="Write a line.") for t in teams)), TIMEOUT))


def turns(results: Sequence[TaskResult]) -> int:
    return sum(1 for result in results for message in result.messages if message.source != "user")


def unheeded_windows(server: OpenAIServer, ledger: RecordingLedger, model: str, key: str) -> list[str]:
    """For every window a 429 of ``model`` announced: the requests that arrived in it after the team had
    recorded it (a cooldown on ``key`` covering the window), beyond those the team had in flight then.

    Each lease on ``key`` is one request to ``model`` (an ``AssistantAgent`` without tools calls its model once a
    turn, and the client never retries), so the requests in flight when the team learned of the window are the
    leases granted before then less the requests that had arrived. Empty when every window was heeded.
    """
    requests = server.requests(model)
    problems = []
    for answer in requests:
        until = answer.announced_until
        if until is None:
            continue
        learned = min(
            (at for at, seconds in ledger.cooldowns[key] if at >= answer.arrived and at + seconds >= until - 1e-9),
            default=None,
        )
        if learned is None:
            problems.append(f"the 429 at {answer.arrived:.3f} was never recorded as a cooldown of its window")
            continue
        in_flight = sum(granted < learned for granted in ledger.leases[key]) - sum(
            r.arrived < learned for r in requests
        )
        late = [r for r in requests if learned <= r.arrived < until]
        granted = [g for g in ledger.leases[key] if learned <= g < until]
        if len(late) > in_flight or granted:
            problems.append(
                f"window [{answer.arrived:.3f}, {until:.3f}) recorded at {learned:.3f}: {len(late)} requests arrived "
                f"after that with {in_flight} in flight; {len(granted)} leases granted inside it"
            )
    return problems


def naive_inside(requests: Sequence[Served]) -> int:
    """Requests that arrived inside any window announced earlier, whether or not the team could know yet."""
    return sum(r.in_announced_window for r in requests)


@pytest.mark.parametrize("hint", ["retry-after-ms", "retry-after"])
async def test_no_request_inside_a_retry_after_window(
    serve: Serve, client: Client, recording_ledger: RecordingLedger, hint: Hint
) -> None:
    """Contracts overstate the server's concurrency (4 declared, 2 true): the server answers 429 with
    ``retry-after-ms`` (and ``retry-after: 1``, as OpenAI: the milliseconds win) or with a ``retry-after`` alone;
    no request the teams admit after taking a 429 in arrives before its window ends, and every turn still gets
    done."""
    server = await serve({MODEL: ModelLimits(max_concurrent=2, busy_retry_after_s=0.15, hint=hint, served_as=SNAPSHOT)})
    overstated = schedule(key=MODEL, max_concurrent=4)
    teams = [
        team(
            f"team{i}",
            [("writer", client(server, MODEL), overstated), ("editor", client(server, MODEL), overstated)],
            recording_ledger,
            max_turns=3,
        )
        for i in range(4)
    ]

    results = await run_all(teams)

    assert [r.stop_reason for r in results] == ["Maximum number of turns 3 reached."] * 4
    refused = [r for r in server.requests(MODEL) if r.status == 429]
    assert refused, "the overstated contract never met the true limit"
    assert all(hint in r.headers for r in refused)
    # Requests already in flight when a 429 was sent do land in its window (a burst of four on two slots): the
    # server's naive flag counts them; only those admitted after the team took the 429 in are a fault.
    in_flight = naive_inside(server.requests(MODEL))
    assert unheeded_windows(server, recording_ledger, MODEL, MODEL) == [], f"{in_flight} in flight"
    assert sum(r.status == 200 for r in server.requests(MODEL)) == turns(results) == 12


async def test_no_request_to_an_exhausted_member_after_its_quota_answer(
    serve: Serve, client: Client, recording_ledger: RecordingLedger
) -> None:
    """The writer's key is out of quota (429 ``insufficient_quota``). Two teams share the key: the first reaches
    it once and routes around it; the second, queued behind that call, never reaches it, and neither does a
    team that runs afterwards."""
    server = await serve(
        {
            SPENT: ModelLimits(out_of_quota=True),
            MODEL: ModelLimits(max_concurrent=8, served_as=SNAPSHOT),
        }
    )
    spent = schedule(key=SPENT, max_concurrent=1)
    editor = schedule(key=MODEL, max_concurrent=8)

    def make(name: str) -> CapacityAwareGroupChat:
        members = [("writer", client(server, SPENT), spent), ("editor", client(server, MODEL), editor)]
        return team(name, members, recording_ledger, max_turns=2)

    first = asyncio.ensure_future(make("first").run(task="Write a line."))
    await server.wait_until(lambda: bool(server.requests(SPENT)))  # the first team's call is in service
    second = asyncio.ensure_future(make("second").run(task="Write a line."))
    results = list(await asyncio.wait_for(asyncio.gather(first, second), TIMEOUT))
    results += await run_all([make("later")])

    calls = server.requests(SPENT)
    assert len(calls) == 1
    assert calls[0].quota
    assert recording_ledger.exhausted[SPENT], "the quota answer was not recorded as exhausted"
    assert [r.stop_reason for r in results] == ["Maximum number of turns 2 reached."] * 3
    assert [m.source for m in results[0].messages] == ["user", "editor", "editor"]
    assert all(m.source != "writer" for result in results for m in result.messages)


async def test_tpm_overshoot_is_at_most_one_request(
    serve: Serve, client: Client, recording_ledger: RecordingLedger
) -> None:
    """``tpm=N`` on one slot: however many turns the teams want, the server serves at most N tokens plus one
    request's worth (the test is far shorter than the 60 s window: everything it served counts)."""
    limit = 180
    limits = ModelLimits(tokens=limit, window_s=60, prompt_tokens=30, completion_tokens=20, served_as=SNAPSHOT)
    server = await serve({MODEL: limits})
    contract = schedule(key=MODEL, max_concurrent=1, tpm=limit, max_caller_retries=6)
    teams = [
        team(
            f"team{i}",
            [("writer", client(server, MODEL), contract), ("editor", client(server, MODEL), contract)],
            recording_ledger,
            max_turns=6,
        )
        for i in range(3)
    ]

    results = await run_all(teams)

    assert server.tokens_served(MODEL) <= limit + limits.tokens_per_request
    assert server.tokens_served(MODEL) >= limit  # the contract was reached, not stopped short
    assert all(r.status == 200 for r in server.requests(MODEL))
    assert all(r.stop_reason is not None and r.stop_reason.startswith("Capacity exhausted") for r in results)
    assert turns(results) == len(server.requests(MODEL))


async def test_exactly_one_request_per_turn_under_honest_contracts(
    serve: Serve, client: Client, recording_ledger: RecordingLedger
) -> None:
    """Contracts equal the true limits (2 at once, requests and tokens a minute): the server never answers 429
    and sees exactly one request per turn."""
    limits = ModelLimits(max_concurrent=2, requests=600, tokens=100_000, window_s=60, served_as=SNAPSHOT)
    server = await serve({MODEL: limits})
    honest = schedule(key=MODEL, max_concurrent=2, rpm=600, tpm=100_000)
    teams = [
        team(
            f"team{i}",
            [("writer", client(server, MODEL), honest), ("editor", client(server, MODEL), honest)],
            recording_ledger,
            max_turns=4,
        )
        for i in range(4)
    ]

    results = await run_all(teams)

    assert [r.stop_reason for r in results] == ["Maximum number of turns 4 reached."] * 4
    assert [r.status for r in server.requests()] == [200] * 16
    assert turns(results) == 16
    assert len(recording_ledger.leases[MODEL]) == 16


async def test_the_next_request_comes_after_the_requests_reset(
    serve: Serve, client: Client, recording_ledger: RecordingLedger
) -> None:
    """A 429 with no Retry-After, only ``x-ratelimit-remaining-requests: 0`` and ``x-ratelimit-reset-requests``
    (3 requests per 300 ms window, "213ms" left): no request the teams admit after it arrives before the
    reset."""
    server = await serve({MODEL: ModelLimits(requests=3, window_s=0.3, hint="reset", served_as=SNAPSHOT)})
    overstated = schedule(key=MODEL, max_concurrent=4)
    teams = [
        team(
            f"team{i}",
            [("writer", client(server, MODEL), overstated), ("editor", client(server, MODEL), overstated)],
            recording_ledger,
            max_turns=3,
        )
        for i in range(3)
    ]

    results = await run_all(teams)

    assert [r.stop_reason for r in results] == ["Maximum number of turns 3 reached."] * 3
    refused = [r for r in server.requests(MODEL) if r.status == 429]
    assert refused, "the window's request limit was never met"
    for answer in refused:
        assert "retry-after" not in answer.headers
        assert "retry-after-ms" not in answer.headers
        assert answer.headers["x-ratelimit-remaining-requests"] == "0"
        assert answer.headers["x-ratelimit-reset-requests"].endswith("ms")
    assert unheeded_windows(server, recording_ledger, MODEL, MODEL) == []
    assert sum(r.status == 200 for r in server.requests(MODEL)) == turns(results) == 9
