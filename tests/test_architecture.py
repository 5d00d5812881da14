"""The shape of the source tree (docs/architecture.md), checked so it cannot drift back:
small modules, short functions, no import cycles, no module importing the package face,
and few modules directly under ``src/imageclf/`` besides the packages.

Imports are read with ``ast`` (nothing is imported), including the ones inside functions:
a lazy import that closes a cycle is still a cycle in the design.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "imageclf"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
MAX_TOP_MODULES = 12


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((SRC / PACKAGE).rglob("*.py"))}


def _base(name: str, path: Path, level: int) -> str:
    """The package a relative import of ``level`` dots starts from."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for _ in range(level - 1):
        package = package.rpartition(".")[0]
    return package


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports: ``from pkg import sub`` counts as ``pkg.sub``
    when that is a module, else as ``pkg`` (its ``__init__``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == PACKAGE}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                target = _base(name, path, node.level)
                target = f"{target}.{node.module}" if node.module else target
            elif (node.module or "").split(".")[0] == PACKAGE:
                target = node.module
            else:
                continue
            subs = {f"{target}.{a.name}" for a in node.names} & known
            found |= subs or {target}
    return found & known


def import_graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports(name, path, known) - {name} for name, path in found.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(graph):
        if root in state:
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


# ---------------------------------------------------------------- the checks
def test_no_import_cycles():
    assert find_cycle(import_graph()) is None


def test_no_module_imports_the_package_face():
    """``imageclf/__init__.py`` imports the whole package: a module that imports it (for
    ``__version__``, say) pulls everything into the lowest layer."""
    importers = sorted(name for name, deps in import_graph().items() if PACKAGE in deps)
    assert importers == []


def test_modules_are_small():
    big = {n: len(p.read_text().splitlines()) for n, p in modules().items()}
    assert {n: lines for n, lines in big.items() if lines > MAX_MODULE_LINES} == {}


def test_functions_are_short():
    long = {}
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long[f"{name}.{node.name}"] = lines
    assert long == {}


def test_few_modules_beside_the_packages():
    top = sorted(p.name for p in (SRC / PACKAGE).glob("*.py"))
    assert len(top) <= MAX_TOP_MODULES, top


# ---------------------------------------------------------------- the checks can fail
def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from .. import __version__", {"imageclf"}),
        ("from ..version import __version__", {"imageclf.version"}),
        ("from . import loop", {"imageclf.training.loop"}),
        ("def f():\n    from ..errors import UserInputError", {"imageclf.errors"}),
        ("import imageclf.errors", {"imageclf.errors"}),
        ("import numpy", set()),
    ],
)
def test_imports_are_read_as_python_resolves_them(tmp_path, source, expected):
    known = {"imageclf", "imageclf.version", "imageclf.errors", "imageclf.training.loop"}
    path = tmp_path / "parts.py"
    path.write_text(source)
    assert imports("imageclf.training.parts", path, known) == expected
