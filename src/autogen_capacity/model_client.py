"""A capacity contract on a model client: :class:`CapacityAwareChatCompletionClient` wraps any AutoGen
``ChatCompletionClient`` and leases its key for every ``create`` and ``create_stream``."""

from __future__ import annotations

import contextlib
import random
import warnings
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from typing import Any, Literal

from autogen_core import CancellationToken, Component, ComponentModel
from autogen_core.models import (
    ChatCompletionClient,
    CreateResult,
    LLMMessage,
    ModelCapabilities,
    ModelInfo,
    RequestUsage,
)
from autogen_core.tools import Tool, ToolSchema
from pydantic import BaseModel
from typing_extensions import Self

from ._container import TURN_LEASE
from ._contract_call import ContractCall
from ._hazards import client_retries
from ._plan import DEFAULT_EXHAUSTED_TTL_S
from .contracts import AgentCapacity, ledger_key
from .exceptions import CapacityConfigWarning
from .ledger import CapacityLedger, default_ledger
from .ledger.config import LedgerConfig, ledger_config_of, ledger_from_config
from .overload import OverloadClassifier
from .priority import Priority

__all__ = ["CapacityAwareChatCompletionClient", "CapacityAwareChatCompletionClientConfig"]


class CapacityAwareChatCompletionClientConfig(BaseModel):
    """The wrapped client's component config, the contract, and where usage is recorded."""

    model_client: ComponentModel
    capacity: AgentCapacity
    key: str | None = None
    """The ledger key; ``None``: ``capacity.key``, else the wrapped client's model name."""
    priority: Priority = "default"
    ledger: LedgerConfig | None = None
    """The ledger to record usage in; ``None``: the in-process default ledger."""


class CapacityAwareChatCompletionClient(ChatCompletionClient, Component[CapacityAwareChatCompletionClientConfig]):
    """A ``ChatCompletionClient`` that follows a provider's capacity contract.

    Every ``create`` (and every ``create_stream``, until the stream ends or is closed) holds a lease on the
    contract's key: at most ``max_concurrent`` calls at once across every client, agent, team and tool that
    share the key and the ledger, waiting by the contract's backoff schedule while the key is full. The tokens
    a call used are debited (``tpm``) before its lease is released. A call answered with overload (an SDK's
    429, with its Retry-After) cools the key down for every sharer and is retried by the contract, at most
    ``max_caller_retries`` times; a spent quota marks the key exhausted and raises
    :class:`~autogen_capacity.CapacityExhausted`. Other errors propagate unchanged.

    Inside a :class:`~autogen_capacity.CapacityAwareGroupChat` whose member turn already holds a lease on the
    same key, a call runs under that lease (the team records it): one lease per turn, not two.

    Turn the wrapped SDK's own retries off (``max_retries=0``): a warning says so when they are on. To learn
    from the headers of successful answers too, build the wrapped client with
    ``http_client=autogen_capacity.headers.async_client(cooldown_observer(ledger, key))``.

    Args:
        model_client: The client to wrap.
        capacity: The provider's contract.
        key: The ledger key; ``None``: ``capacity.key``, else the wrapped client's model name, else its class.
        ledger: Where leases and cooldowns are recorded; :func:`~autogen_capacity.default_ledger` when ``None``.
            Serialized only when it can be named (see :func:`~autogen_capacity.ledger_config_of`).
        priority: The calls' class under overload (``"critical"``, ``"default"``, ``"sheddable"``).
        overload_classifier: Decides which errors are overload. Not serialized.
        exhausted_ttl_s: How long a key whose quota is exhausted refuses every caller sharing the ledger.
        rng: The random source of backoff jitter. Not serialized.

    .. versionadded:: 0.2.0
    """

    component_type = "model"
    component_config_schema = CapacityAwareChatCompletionClientConfig
    component_provider_override = "autogen_capacity.CapacityAwareChatCompletionClient"

    def __init__(
        self,
        model_client: ChatCompletionClient,
        capacity: AgentCapacity,
        *,
        key: str | None = None,
        ledger: CapacityLedger | None = None,
        priority: Priority = "default",
        overload_classifier: OverloadClassifier | None = None,
        exhausted_ttl_s: float = DEFAULT_EXHAUSTED_TTL_S,
        rng: random.Random | None = None,
    ) -> None:
        if not isinstance(model_client, ChatCompletionClient):
            raise TypeError(f"model_client must be a ChatCompletionClient, got {type(model_client).__name__}")
        capacity = AgentCapacity.model_validate(capacity)
        self._client = model_client
        self._capacity = capacity
        self._key_given = key
        self._ledger_given = ledger
        self._ledger_config: LedgerConfig | None = None
        self._call: ContractCall[str | CreateResult] = ContractCall(
            _model_name(model_client),
            key or ledger_key(capacity, _model_name(model_client)),
            capacity,
            leases=capacity.max_concurrent is not None or capacity.rpm is not None or capacity.tpm is not None,
            tokens_of=_result_tokens,
            ledger=lambda: self.ledger,
            classify=overload_classifier,
            exhausted_ttl_s=exhausted_ttl_s,
            rng=rng,
            priority=priority,
            event=("autogen_capacity.model_overloaded", "model"),
        )
        retries = client_retries(model_client)
        if retries:
            warnings.warn(
                f"the wrapped model client retries by itself (max_retries={retries}), which multiplies requests "
                "under 429s: CapacityAwareChatCompletionClient already retries by contract. Build it with "
                "max_retries=0.",
                CapacityConfigWarning,
                stacklevel=2,
            )

    @property
    def key(self) -> str:
        """The ledger key every call leases."""
        return self._call.key

    @property
    def capacity(self) -> AgentCapacity:
        """The contract the calls follow."""
        return self._capacity

    @property
    def model_client(self) -> ChatCompletionClient:
        """The wrapped client."""
        return self._client

    @property
    def ledger(self) -> CapacityLedger:
        """Where the calls' usage is recorded."""
        if self._ledger_given is not None:
            return self._ledger_given
        return ledger_from_config(self._ledger_config) if self._ledger_config is not None else default_ledger()

    def _under_turn(self) -> bool:
        """Whether a capacity-aware team's member turn holds a lease on this key now."""
        held = TURN_LEASE.get()
        return held is not None and held.key == self.key and not held.released

    async def create(
        self,
        messages: Sequence[LLMMessage],
        *,
        tools: Sequence[Tool | ToolSchema] = [],
        tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
        json_output: bool | type[BaseModel] | None = None,
        extra_create_args: Mapping[str, Any] = {},
        cancellation_token: CancellationToken | None = None,
    ) -> CreateResult:
        """The wrapped client's ``create``, under the contract."""
        kwargs: dict[str, Any] = {
            "tools": tools,
            "tool_choice": tool_choice,
            "json_output": json_output,
            "extra_create_args": extra_create_args,
            "cancellation_token": cancellation_token,
        }
        if self._under_turn():
            return await self._client.create(messages, **kwargs)

        async def once() -> AsyncGenerator[str | CreateResult, None]:
            yield await self._client.create(messages, **kwargs)

        async with contextlib.aclosing(self._call.stream(once, cancellation_token)) as attempts:
            async for item in attempts:
                if isinstance(item, CreateResult):
                    return item
        raise RuntimeError("The wrapped client's create returned no CreateResult.")  # pragma: no cover

    async def create_stream(
        self,
        messages: Sequence[LLMMessage],
        *,
        tools: Sequence[Tool | ToolSchema] = [],
        tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
        json_output: bool | type[BaseModel] | None = None,
        extra_create_args: Mapping[str, Any] = {},
        cancellation_token: CancellationToken | None = None,
    ) -> AsyncGenerator[str | CreateResult, None]:
        """The wrapped client's ``create_stream``, under the contract: the lease is held until the stream ends
        (or is closed). A stream that fails with overload before its first chunk is retried; one that fails
        after yielding chunks is not (they were seen), and the error propagates after it is recorded."""

        def start() -> AsyncGenerator[str | CreateResult, None]:
            return self._client.create_stream(
                messages,
                tools=tools,
                tool_choice=tool_choice,
                json_output=json_output,
                extra_create_args=extra_create_args,
                cancellation_token=cancellation_token,
            )

        stream = start() if self._under_turn() else self._call.stream(start, cancellation_token)
        async with contextlib.aclosing(stream):  # closed early or cancelled: the lease is released at once
            async for item in stream:
                yield item

    def _stream(self, start: Any, cancellation_token: CancellationToken | None) -> AsyncIterator[str | CreateResult]:
        return self._call.stream(start, cancellation_token)

    async def close(self) -> None:
        """Close the wrapped client."""
        await self._client.close()

    def actual_usage(self) -> RequestUsage:
        return self._client.actual_usage()

    def total_usage(self) -> RequestUsage:
        return self._client.total_usage()

    def count_tokens(self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = []) -> int:
        return self._client.count_tokens(messages, tools=tools)

    def remaining_tokens(self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = []) -> int:
        return self._client.remaining_tokens(messages, tools=tools)

    @property
    def capabilities(self) -> ModelCapabilities:  # deprecated upstream, still abstract
        return self._client.capabilities

    @property
    def model_info(self) -> ModelInfo:
        return self._client.model_info

    def _to_config(self) -> CapacityAwareChatCompletionClientConfig:
        return CapacityAwareChatCompletionClientConfig(
            model_client=self._client.dump_component(),
            capacity=self._capacity,
            key=self._key_given,
            priority=self._call.priority,
            ledger=self._ledger_config if self._ledger_given is None else ledger_config_of(self._ledger_given),
        )

    @classmethod
    def _from_config(cls, config: CapacityAwareChatCompletionClientConfig) -> Self:
        client = cls(
            ChatCompletionClient.load_component(config.model_client),
            config.capacity,
            key=config.key,
            priority=config.priority,
        )
        client._ledger_config = config.ledger
        return client


def _model_name(client: ChatCompletionClient) -> str:
    """The model a client calls (autogen-ext's clients keep it in their create args), else its class name."""
    create_args: Any = getattr(client, "_create_args", None)
    model = create_args.get("model") if isinstance(create_args, Mapping) else None
    return model if isinstance(model, str) and model else type(client).__name__


def _result_tokens(item: str | CreateResult) -> int | None:
    if isinstance(item, CreateResult):
        return item.usage.prompt_tokens + item.usage.completion_tokens
    return None
