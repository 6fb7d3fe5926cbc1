"""The package's import graph: one-way dependencies, no cycle hidden behind a lazy import.

Why: an import cycle works only while modules happen to be imported in a lucky order; a module-level ``__getattr__``
or a function-local import hides the cycle from a reader and from tools. The graph is read from the source (``ast``),
so the test needs no import order and fails with the cycle spelled out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "aeflib"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(module: str, node: ast.ImportFrom | ast.Import, is_package: bool) -> list[str]:
    """The aeflib modules an import statement executes (``from a.b import c`` → ``a.b.c`` if that is a module)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in MODULES]
    if node.level:  # relative import
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if target not in MODULES:
        return []
    subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES]
    if subs and len(subs) == len(node.names):
        return subs  # `from package import submodule`: the submodule (its package runs first, as every parent does)
    return [target, *subs]


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _top_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: module body, ``try``/``if`` blocks, not ``TYPE_CHECKING``."""
    out: list = []
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            out.append(node)
        elif isinstance(node, ast.If) and not _is_type_checking(node):
            stack += node.body + node.orelse
        elif isinstance(node, ast.Try):
            stack += node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]
    return out


def _type_checking_imports(tree: ast.Module) -> set[int]:
    return {id(n) for block in tree.body if isinstance(block, ast.If) and _is_type_checking(block)
            for n in ast.walk(block)}


def _graph() -> dict[str, set[str]]:
    """Module → the aeflib modules it imports, at module level or inside functions (a lazy import still runs)."""
    graph = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        skip = _type_checking_imports(tree)
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom) and id(node) not in skip:
                deps |= set(_resolve(name, node, path.name == "__init__.py"))
        graph[name] = deps - {name}
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_cycle_finder_finds_a_known_cycle():
    # Guards the test below against a finder that can never fail.
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_graph_sees_real_imports():
    graph = _graph()
    assert len(graph) > 20
    assert any(graph.values()), "no aeflib-internal import was found: the parser is broken"


def test_import_graph_is_acyclic():
    cycle = _find_cycle(_graph())
    assert cycle is None, "import cycle: " + " → ".join(cycle)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_getattr(name):
    """A module ``__getattr__`` can hide a cycle; only the package root has one, to defer heavy optional imports."""
    tree = ast.parse(MODULES[name].read_text())
    hooks = [n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "__getattr__"]
    if name == "aeflib":
        return
    assert not hooks, f"{name} defines a module __getattr__ (lazy attributes hide import cycles)"


def test_lazy_submodules_of_the_root_are_not_imported_by_the_core():
    """The root defers evaluation, orchestration, paper, plots, recovery and widgets (matplotlib, pandas, papermill,
    peft, lm-eval); the core it imports eagerly must not import them, or the deferral would hide a dependency."""
    import aeflib

    graph = _graph()
    core = {"aeflib.data", "aeflib.fusion", "aeflib.importance", "aeflib.io", "aeflib.models", "aeflib.pruning",
            "aeflib.scores"}
    seen, stack = set(), list(core)
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack += graph[node]
    lazy = {f"aeflib.{name}" for name in aeflib._LAZY}
    reached = sorted(m for m in seen if any(m == lz or m.startswith(lz + ".") for lz in lazy))
    assert not reached, f"the eager core imports deferred modules: {reached}"


def test_function_local_aeflib_imports_are_none():
    """Function-local imports are for optional heavy third-party dependencies only, never for aeflib modules."""
    local = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        allowed = {id(n) for n in _top_level_imports(tree)}
        allowed |= _type_checking_imports(tree)  # annotations only: never executed
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom) and id(node) not in allowed \
                    and _resolve(name, node, path.name == "__init__.py"):
                local.append(f"{name}:{node.lineno}")
    assert not local, f"function-local aeflib imports: {local}"
