"""Whether a component's provider names a class that exists, found without running any provider code.

The module is located with :class:`importlib.machinery.PathFinder`, one package level at a time, so no
package's ``__init__`` runs; its source is then parsed with :mod:`ast` for a top-level binding of the class
name. Modules already imported (AutoGen's own, for instance) are asked directly.
"""

from __future__ import annotations

import ast
import functools
import importlib.machinery
import sys
from collections.abc import Iterable, Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path

from .._compat import WELL_KNOWN_PROVIDERS

_STAR_DEPTH = 8
"""How many ``from x import *`` hops are followed before a name is given the benefit of the doubt."""


def provider_problem(provider: object) -> str | None:
    """Why ``provider`` cannot be loaded, or ``None`` when it names a class that exists (or may exist)."""
    if not isinstance(provider, str) or not provider:
        return "a component needs a provider (a dotted class path)"
    path = WELL_KNOWN_PROVIDERS.get(provider, provider)
    module, _, name = path.rpartition(".")
    if not module or not name:
        return f"{provider!r} is not a dotted class path (module.Class)"
    found = _defines(module, name)
    if found is None:
        return f"{provider!r} cannot be imported (no module {module!r})"
    return None if found else f"{provider!r} cannot be imported (module {module!r} has no {name!r})"


@functools.cache
def _defines(module: str, name: str, hops: int = 0) -> bool | None:
    """Whether ``module`` binds ``name`` at top level; ``None`` when there is no such module."""
    loaded = sys.modules.get(module)
    if loaded is not None:
        return hasattr(loaded, name)
    spec = find_module(module)
    if spec is None:
        return None
    source = _source_of(spec)
    if source is None or hops > _STAR_DEPTH:
        return True  # an extension or namespace module: its names cannot be read without running it
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return False
    bound, stars = _top_level_names(tree.body)
    if name in bound or "__getattr__" in bound:
        return True
    package = module if spec.submodule_search_locations is not None else module.rpartition(".")[0]
    return any(_defines(star, name, hops + 1) for star in _resolve(stars, package))


def find_module(module: str) -> ModuleSpec | None:
    """The spec of ``module``, found level by level without importing (running) any package on the way."""
    search: Sequence[str] | None = None
    spec: ModuleSpec | None = None
    parts = module.split(".")
    for i in range(len(parts)):
        name = ".".join(parts[: i + 1])
        loaded = sys.modules.get(name)
        if loaded is not None and loaded.__spec__ is not None:
            spec = loaded.__spec__
        else:
            try:
                spec = importlib.machinery.PathFinder.find_spec(name, search)
            except (ImportError, ValueError):
                return None
        if spec is None:
            return None
        locations = spec.submodule_search_locations
        if i < len(parts) - 1 and locations is None:
            return None  # a module, not a package: it has no submodules
        search = list(locations) if locations is not None else None
    return spec


def _source_of(spec: ModuleSpec) -> str | None:
    origin = spec.origin
    if not origin or not origin.endswith(".py"):
        return None
    try:
        return Path(origin).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _top_level_names(body: Iterable[ast.stmt]) -> tuple[set[str], list[tuple[str, int]]]:
    """Names a module body binds (through ``if`` and ``try`` blocks too), and its ``import *`` sources."""
    bound: set[str] = set()
    stars: list[tuple[str, int]] = []
    for node in body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            bound.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            bound.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, ast.Import):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if alias.name == "*":
                    stars.append((node.module or "", node.level))
                else:
                    bound.add(alias.asname or alias.name)
        elif isinstance(node, ast.If | ast.Try | ast.With):
            for block in _blocks(node):
                more, more_stars = _top_level_names(block)
                bound |= more
                stars += more_stars
    return bound, stars


def _blocks(node: ast.If | ast.Try | ast.With) -> list[list[ast.stmt]]:
    if isinstance(node, ast.If):
        return [node.body, node.orelse]
    if isinstance(node, ast.With):
        return [node.body]
    return [node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)]


def _resolve(stars: list[tuple[str, int]], package: str) -> list[str]:
    """Absolute module names of ``from x import *`` statements in a module of ``package``."""
    out = []
    for module, level in stars:
        if level == 0:
            out.append(module)
            continue
        base = package.split(".")
        base = base[: len(base) - (level - 1)] if level > 1 else base
        out.append(".".join([*base, module] if module else base))
    return out
