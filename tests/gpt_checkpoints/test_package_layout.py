"""The package's architecture as its imports show it (issue: no cycles, layers visible).

Subpackages form layers, each importing only those below it: ``params`` (parameter space) <-
``tasks`` <- ``dataset`` <- ``model`` <- ``analysis`` <- the command-line entry points at the top
level. Every import counts, those inside functions too.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import gpt_checkpoints

ROOT = Path(gpt_checkpoints.__file__).parent
LAYERS = ["params", "tasks", "dataset", "model", "analysis"]  # bottom to top; CLIs above


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        out[".".join(["gpt_checkpoints", *parts])] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        found |= {n for n in names if n in modules}
    return found


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else len(LAYERS)


def test_every_module_imports():
    for name in _modules():
        importlib.import_module(name)


def test_no_import_cycles():
    modules = _modules()
    graph = {m: _imports(p, modules) - {m} for m, p in modules.items()}
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for n in graph[m]:
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack, m, n]))
            if n not in state:
                visit(n, [*stack, m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])


def test_layers_import_only_downwards():
    modules = _modules()
    wrong = [
        f"{m} imports {n}"
        for m, p in modules.items()
        for n in _imports(p, modules)
        if _layer(n) > _layer(m) and m != "gpt_checkpoints"
    ]
    assert not wrong, wrong
