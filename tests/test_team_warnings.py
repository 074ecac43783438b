"""Configuration hazards are Python warnings a developer sees, not log lines nobody reads (issue 16, item 6)."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
from autogen_agentchat.agents import AssistantAgent
from autogen_ext.models.openai import OpenAIChatCompletionClient

from autogen_capacity import CapacityAwareAgentTool, CapacityAwareGroupChat, CapacityConfigWarning

FRESH_INTERPRETER = """
from autogen_agentchat.agents import AssistantAgent
from autogen_ext.models.openai import OpenAIChatCompletionClient
from autogen_capacity import CapacityAwareGroupChat

for _ in range(3):
    client = OpenAIChatCompletionClient(model="gpt-4o", api_key="sk-test"{retries})
    CapacityAwareGroupChat([AssistantAgent("writer", model_client=client)])
"""


def run_fresh(retries: str) -> str:
    """What a fresh interpreter prints on stderr when it builds the team three times at one place."""
    done = subprocess.run(
        [sys.executable, "-c", FRESH_INTERPRETER.format(retries=retries)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stderr


def writer(max_retries: int | None) -> AssistantAgent:
    extra = {} if max_retries is None else {"max_retries": max_retries}
    client = OpenAIChatCompletionClient(model="gpt-4o", api_key="sk-test", **extra)  # type: ignore[arg-type]
    return AssistantAgent("writer", model_client=client)


class TestClientRetries:
    @pytest.mark.parametrize("max_retries", [None, 3], ids=["default", "explicit"])
    def test_a_client_with_its_own_retries_warns(self, max_retries: int | None) -> None:
        """A member whose client retries by itself (OpenAI's default of 2 included) warns, naming it and the fix."""
        member = writer(max_retries)
        with pytest.warns(CapacityConfigWarning, match=r"'writer'.*max_retries=0") as caught:
            CapacityAwareGroupChat([member])
        assert caught[0].filename == __file__  # points at the line that built the team

    def test_a_client_without_retries_is_quiet(self) -> None:
        """``max_retries=0`` is the fix: no warning (the suite turns any warning into an error)."""
        CapacityAwareGroupChat([writer(0)])

    def test_the_agent_tool_warns_too(self) -> None:
        """The capacity-aware agent tool wraps a member the same way, and warns the same way."""
        with pytest.warns(CapacityConfigWarning, match="'writer'") as caught:
            CapacityAwareAgentTool(writer(3))
        assert caught[0].filename == __file__

    def test_the_warning_can_be_filtered(self) -> None:
        """It is a warning category like any other: an app or a test suite can silence it."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CapacityConfigWarning)
            CapacityAwareGroupChat([writer(3)])

    def test_a_fresh_interpreter_shows_it_once(self) -> None:
        """With no logging configured and no filters, the developer sees the warning on stderr, once per place."""
        stderr = run_fresh(", max_retries=3")
        assert stderr.count("CapacityConfigWarning") == 1, stderr
        assert "'writer'" in stderr
        assert run_fresh(", max_retries=0") == ""

    def test_the_warning_can_fail_a_build(self) -> None:
        """``warnings.simplefilter("error", CapacityConfigWarning)`` (or pytest's ``filterwarnings``) makes CI fail on
        it."""
        with warnings.catch_warnings():
            warnings.simplefilter("error", CapacityConfigWarning)
            with pytest.raises(CapacityConfigWarning, match="'writer'"):
                CapacityAwareGroupChat([writer(3)])
