"""The package layout stays readable: packages only, no import cycles, arrows pointing down (#31).

The check reads the source (``ast``), imports nothing: every ``import``/``from ... import`` of a tlkit
module counts, at module level and inside functions alike; only ``if TYPE_CHECKING:`` blocks are left
out (annotations, never run). ``docs/DESIGN.md`` draws the same order.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "tlkit"

#: The only modules allowed directly under tlkit/: the package face, ``python -m tlkit``, the public API.
LOOSE_OK = {"__init__", "__main__", "api"}

#: Bottom to top; a module may import from its own layer's package or from a layer below, never above.
#: Why this order: data flows files -> records (data) -> model (models) -> engine -> features | training ->
#: active learning, which audit and serve build on; demo, the API and the CLI only put those together.
#: ``tlkit`` is the package itself, at the bottom: modules read ``tlkit.__version__``, and its __init__.py
#: imports no tlkit module (it loads tlkit.api by name, on first use of a public name).
LAYERS = ("tlkit", "core", "data", "models", "engines", "features", "train", "active", "audit", "serve", "demo",
          "api", "cli", "__main__")


def module_names() -> dict[str, Path]:
    """``{dotted module name: file}`` for every module under tlkit/ (a package is its ``__init__.py``)."""
    out = {}
    for file in sorted(PACKAGE.rglob("*.py")):
        parts = list(file.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = file
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def _imported(node: ast.Import | ast.ImportFrom, package: str, modules: dict[str, Path]) -> list[str]:
    """The dotted names ``node`` imports (``from a import b`` is ``a.b`` when that is a module)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: from the module's package, up level - 1 packages
        parts = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join([*parts, base] if base else parts)
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]


def import_graph() -> dict[str, set[str]]:
    """``{module: the tlkit modules it imports}`` (the nearest enclosing module of each imported name)."""
    modules = module_names()
    graph: dict[str, set[str]] = {}
    for name, file in modules.items():
        tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
        package = name if file.name == "__init__.py" else name.rpartition(".")[0]
        skip = _type_checking_nodes(tree)
        targets = set()
        for node in ast.walk(tree):
            if id(node) in skip or not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target in _imported(node, package, modules):
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    targets.add(target)
        graph[name] = targets
    return graph


def layer(module: str) -> str:
    """``tlkit`` for the package itself, else the first name under it (``tlkit.core.io`` -> ``core``)."""
    return module.split(".")[1] if "." in module else module


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None (depth-first search, white/grey/black)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_loose_modules_at_the_top():
    loose = sorted(f.name for f in PACKAGE.glob("*.py") if f.stem not in LOOSE_OK)
    assert not loose, f"modules outside a package under tlkit/: {', '.join(loose)}; move each into its package"


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per knot: remove the modules of each cycle found and look again."""
    found, graph = [], {k: set(v) for k, v in graph.items()}
    while cycle := find_cycle(graph):
        found.append(cycle)
        graph = {k: v - set(cycle) for k, v in graph.items() if k not in cycle}
    return found


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles:\n  " + "\n  ".join(" -> ".join(c) for c in found)


def test_arrows_point_down_the_layers():
    graph = import_graph()
    unknown = sorted({layer(m) for m in graph} - set(LAYERS))
    assert not unknown, f"packages missing from LAYERS: {', '.join(unknown)}; place each in the order"
    rank = {name: i for i, name in enumerate(LAYERS)}
    upward = sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets
                    if rank[layer(b)] > rank[layer(a)])
    assert not upward, "imports from a higher layer:\n  " + "\n  ".join(upward)


def test_the_check_sees_imports_inside_functions():
    """The graph is not blind to the late imports that hide most cycles."""
    graph = import_graph()
    assert "tlkit.train.engine" in graph["tlkit.train.tune"]  # imported inside fit_record only
