"""Imports point down: the library never imports the lab (``trl_likelihood/lab``, the experiments above it), and no
two package modules import each other at module level, directly or through others (no cycle)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "trl_likelihood"
RUNS_THE_LAB = {"trl_likelihood.demo"}  # ``trl-likelihood demo`` runs the lab's experiments on purpose


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(module: str, top_level_only: bool) -> set[str]:
    """Package modules ``module`` imports (``from x import y`` counts ``x`` and ``x.y``); ``top_level_only`` leaves
    out imports inside functions, which are deferred on purpose (e.g. ``entry``'s fast ``--help``)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            name = (f"{base}.{node.module}" if node.module else base) if node.level else (node.module or "")
            found |= {name, *(f"{name}.{alias.name}" for alias in node.names)}
    return {name for name in found if name in MODULES} - {module}


def test_the_library_never_imports_the_lab():
    for module in MODULES:
        if module.startswith("trl_likelihood.lab") or module in RUNS_THE_LAB:
            continue
        lab = sorted(m for m in _imports(module, top_level_only=False) if m.startswith("trl_likelihood.lab"))
        assert not lab, f"{module} imports {lab}: the lab sits above the library"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` (module -> modules it imports) that is not a package importing its own submodules."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for child in sorted(graph.get(node, ())):
            if state.get(child) == "open":
                cycle = [*path[path.index(child) :], child]
                if not _through_a_package(cycle):
                    return cycle
            elif child not in state and (found := visit(child, [*path, child])):
                return found
        state[node] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module, [module])):
            return found
    return None


def _through_a_package(cycle: list[str]) -> bool:
    """A package's ``__init__`` importing its own submodules, which import siblings through the package, is how
    Python packages are built, not a cycle between modules."""
    return any(
        m in MODULES and MODULES[m].name == "__init__.py" and all(c.startswith(m) for c in cycle) for m in cycle
    )


def test_no_import_cycle_between_modules():
    assert find_cycle({module: _imports(module, top_level_only=True) for module in MODULES}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the check can fail
