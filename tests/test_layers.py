"""The package's shape (issue 15): the pure core imports no AutoGen runtime and no ledger, and no two modules
import each other (not even from inside a function, the usual way to hide a cycle)."""

from __future__ import annotations

import ast
from pathlib import Path

import autogen_capacity

SOURCE = Path(autogen_capacity.__file__).parent
CORE = ("contracts", "backoff", "overload", "routing", "priority", "adaptive", "ledger/_limits")
"""Pure modules: no I/O, no AutoGen, no ledger."""


def _module(path: Path) -> str:
    parts = path.relative_to(SOURCE).with_suffix("").parts
    return ".".join(parts)


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node but those under ``if TYPE_CHECKING:`` (imports for annotations only: no cycle at run time)."""
    found: list[ast.AST] = []
    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            pending.extend(node.orelse)
            continue
        found.append(node)
        pending.extend(ast.iter_child_nodes(node))
    return found


def _imports(path: Path) -> set[str]:
    """The package modules ``path`` imports at run time, anywhere in it (relative imports resolved)."""
    package = _module(path).split(".")[:-1]
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            names = [f"{target}.{alias.name}" if target else alias.name for alias in node.names]
            found |= {n for n in [target, *names] if n and (SOURCE / Path(*n.split("."))).with_suffix(".py").exists()}
    return found


def test_no_two_modules_import_each_other() -> None:
    """Every run-time import between the package's modules goes one way (module-level or inside a function)."""
    graph = {_module(path): _imports(path) for path in SOURCE.rglob("*.py")}
    cycles = sorted(f"{a} <-> {b}" for a, targets in graph.items() for b in targets if a in graph.get(b, ()) and a < b)
    assert cycles == []


def test_the_core_is_pure() -> None:
    """The core modules import neither AutoGen nor any ledger, nor the team."""
    offenders: dict[str, list[str]] = {}
    for name in CORE:
        path = (SOURCE / name).with_suffix(".py")
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        bad = [m for m in imported if m.startswith("autogen_") or "ledger" in m.split(".") or m.startswith("_team")]
        if bad:
            offenders[name] = bad
    assert offenders == {}
