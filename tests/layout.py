"""Import-graph checks shared by the packages' layout tests (no cycles, layers import downwards).

Every import counts, those inside functions too.
"""

from __future__ import annotations

import ast
from pathlib import Path


def package_modules(package: str, root: Path) -> dict[str, Path]:
    """Dotted name -> file of every module of ``package`` (rooted at ``root``)."""
    out = {}
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        out[".".join([package, *parts])] = path
    return out


def imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of ``modules`` that ``path`` imports (``from a import b`` counts a.b)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        found |= {n for n in names if n in modules}
    return found


def find_cycle(modules: dict[str, Path]) -> list[str] | None:
    """One import cycle as a path of module names, or None."""
    graph = {m: imports(p, modules) - {m} for m, p in modules.items()}
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> list[str] | None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return [*stack, m, n]
            if n not in state and (cycle := visit(n, [*stack, m])):
                return cycle
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m, [])):
            return cycle
    return None


def upward_imports(modules: dict[str, Path], layers: list[str]) -> list[str]:
    """Imports from a lower layer (subpackage, ``layers`` bottom to top) into a higher one; the
    package's top-level modules (its commands) sit above every layer."""

    def layer(module: str) -> int:
        parts = module.split(".")
        return layers.index(parts[1]) if len(parts) > 1 and parts[1] in layers else len(layers)

    package = next(iter(modules)).split(".")[0]
    return [
        f"{m} imports {n}"
        for m, p in modules.items()
        for n in imports(p, modules)
        if layer(n) > layer(m) and m != package
    ]
