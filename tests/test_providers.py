"""Finding a provider's class by reading source: no package code runs, and the common shapes are found."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from autogen_capacity.audit._providers import _defines, find_module, provider_problem

SOURCES = {
    "__init__.py": "raise RuntimeError('package code ran')\n",
    "plain.py": "class Agent:\n    pass\n\ndef factory():\n    pass\n\nAlias = Agent\n",
    "guarded.py": (
        "try:\n    from .plain import Agent as Tried\nexcept ImportError:\n    Tried = None\n"
        "if True:\n    import json\nelse:\n    Other = 1\n"
    ),
    "starred.py": "from .plain import *\n",
    "lazy.py": "def __getattr__(name):\n    return name\n",
    "broken.py": "class (:\n",
    "sub/__init__.py": "raise RuntimeError('subpackage code ran')\n",
    "sub/deep.py": "from ..plain import *\n",
}


@pytest.fixture(name="package", autouse=True)
def _package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A package on ``sys.path`` whose ``__init__`` files raise if they ever run."""
    root = tmp_path / "srcpkg"
    for name, text in SOURCES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    _defines.cache_clear()
    return "srcpkg"


@pytest.mark.parametrize(
    ("provider", "found"),
    [
        ("srcpkg.plain.Agent", True),
        ("srcpkg.plain.factory", True),
        ("srcpkg.plain.Alias", True),
        ("srcpkg.plain.Missing", False),
        ("srcpkg.guarded.Tried", True),
        ("srcpkg.guarded.json", True),
        ("srcpkg.guarded.Other", True),
        ("srcpkg.starred.Agent", True),
        ("srcpkg.starred.Missing", False),
        ("srcpkg.sub.deep.Agent", True),
        ("srcpkg.lazy.Anything", True),
        ("srcpkg.broken.Agent", False),
    ],
)
def test_names_found_in_source(provider: str, found: bool) -> None:
    """Classes, functions, assignments, imports in try/if blocks, star imports and ``__getattr__`` count."""
    assert (provider_problem(provider) is None) is found
    assert "srcpkg" not in sys.modules


@pytest.mark.parametrize(
    ("provider", "problem"),
    [
        ("srcpkg.nowhere.Agent", "no module 'srcpkg.nowhere'"),
        ("srcpkg.plain.Agent.Inner", "no module 'srcpkg.plain.Agent'"),
        ("Agent", "is not a dotted class path"),
        ("", "needs a provider"),
        (None, "needs a provider"),
        ("srcpkg.plain.Missing", "module 'srcpkg.plain' has no 'Missing'"),
    ],
)
def test_problems_are_named(provider: object, problem: str) -> None:
    """Each way a provider cannot load is said in words."""
    message = provider_problem(provider)
    assert message is not None
    assert problem in message


def test_imported_modules_are_asked_directly() -> None:
    """A module already imported answers with its attributes (AutoGen's own, a well-known alias)."""
    assert provider_problem("autogen_agentchat.agents.AssistantAgent") is None
    assert provider_problem("autogen_agentchat.agents.NoSuchAgent") is not None


def test_extension_module_gets_the_benefit_of_the_doubt() -> None:
    """A compiled module cannot be read without running it: its names are assumed to exist."""
    candidates = ("xxlimited", "_testbuffer", "_xxtestfuzz", "_curses", "mmap", "_bz2")
    compiled = [
        name
        for name in candidates
        if name not in sys.modules and (spec := find_module(name)) is not None and str(spec.origin).endswith(".so")
    ]
    if not compiled:
        pytest.skip("no unimported compiled module to try")
    assert provider_problem(f"{compiled[0]}.Anything") is None
