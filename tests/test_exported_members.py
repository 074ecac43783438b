"""The package's public surface: ``__all__`` lists exactly what ``autogen_capacity`` exposes."""

from __future__ import annotations

import importlib
import types

import pytest

import autogen_capacity


def public_names() -> list[str]:
    """Names the package exposes: no private names, no submodules, no ``from __future__`` features."""
    return [
        name
        for name, value in vars(autogen_capacity).items()
        if (not name.startswith("_") or name == "__version__")
        and not isinstance(value, types.ModuleType)
        and type(value).__module__ != "__future__"
    ]


def isort_style(name: str) -> tuple[int, str]:
    """ruff's RUF022 order: SCREAMING_CASE constants, then CamelCase classes, then everything else."""
    if name.isupper():
        return (0, name)
    if name[:1].isupper():
        return (1, name)
    return (2, name)


def test_all_is_sorted() -> None:
    """``__all__`` is kept sorted (as ruff sorts it), so a diff shows what was added or removed."""
    assert autogen_capacity.__all__ == sorted(autogen_capacity.__all__, key=isort_style)


def test_all_has_no_duplicates() -> None:
    """Every name appears once in ``__all__``."""
    assert len(set(autogen_capacity.__all__)) == len(autogen_capacity.__all__)


def test_all_imports_are_exported() -> None:
    """Every public name the package exposes is in ``__all__``, and nothing else is."""
    exposed, exported = set(public_names()), set(autogen_capacity.__all__)

    assert exposed - exported == set(), "exposed but missing from __all__"
    assert exported - exposed == set(), "in __all__ but not exposed"


@pytest.mark.parametrize("name", autogen_capacity.__all__)
def test_every_exported_name_is_importable(name: str) -> None:
    """``from autogen_capacity import <name>`` works for every name in ``__all__``."""
    namespace: dict[str, object] = {}

    exec(f"from autogen_capacity import {name}", namespace)

    assert namespace[name] is getattr(importlib.import_module("autogen_capacity"), name)


def test_version_is_a_string() -> None:
    """The package reports its version."""
    assert isinstance(autogen_capacity.__version__, str)
    assert autogen_capacity.__version__


def test_api_reference_lists_every_public_name() -> None:
    """docs/api.md names every member of ``autogen_capacity.__all__`` (the API page cannot fall behind)."""
    from pathlib import Path

    reference = (Path(__file__).parent.parent / "docs" / "api.md").read_text(encoding="utf-8")
    missing = [name for name in autogen_capacity.__all__ if name != "__version__" and f"`{name}`" not in reference]
    assert missing == []


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("LedgerClosedError", "autogen_capacity.exceptions.LedgerClosed"),
        ("Overload", "autogen_capacity.overload.OverloadSignal"),
        ("CapacityAwareGroupChatManager", "autogen_capacity._manager.CapacityAwareGroupChatManager"),
        ("CapacityAwareManagerState", "autogen_capacity._manager.CapacityAwareManagerState"),
    ],
)
def test_names_of_0_1_0_still_resolve_with_a_deprecation_warning(old: str, new: str) -> None:
    """A name 0.1.0 exported and this release renamed or made internal still works, for one release, and says so."""
    module, _, name = new.rpartition(".")
    with pytest.warns(DeprecationWarning, match=old):
        found = getattr(autogen_capacity, old)
    assert found is getattr(importlib.import_module(module), name)
    assert old not in autogen_capacity.__all__


def test_an_unknown_name_is_an_attribute_error() -> None:
    """Only the deprecated names resolve through the module's ``__getattr__``."""
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = autogen_capacity.Nope  # type: ignore[attr-defined]
