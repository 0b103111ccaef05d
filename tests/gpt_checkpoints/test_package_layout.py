"""The package's architecture as its imports show it (issue: no cycles, layers visible).

Subpackages form layers, each importing only those below it: ``params`` (parameter space) <-
``tasks`` <- ``dataset`` <- ``model`` <- ``analysis`` <- the command-line entry points at the top
level. Every import counts, those inside functions too.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import gpt_checkpoints
from tests.layout import find_cycle, imports, package_modules, upward_imports

ROOT = Path(gpt_checkpoints.__file__).parent
LAYERS = ["params", "tasks", "dataset", "model", "analysis"]  # bottom to top; CLIs above
COMMANDS = ["collect", "train", "prompt", "evaluate", "import_official"]


def _modules() -> dict[str, Path]:
    return package_modules("gpt_checkpoints", ROOT)


def test_every_module_imports():
    for name in _modules():
        importlib.import_module(name)


def test_no_import_cycles():
    assert find_cycle(_modules()) is None


def test_layers_import_only_downwards():
    wrong = upward_imports(_modules(), LAYERS)
    assert not wrong, wrong


def test_nothing_imports_a_command():
    """Commands are entry points only: what two of them need lives in a library module."""
    modules = _modules()
    commands = {f"gpt_checkpoints.{c}" for c in COMMANDS}
    wrong = [
        f"{m} imports {n}"
        for m, p in modules.items()
        for n in imports(p, modules) & commands
        if n != m  # a command's ``__main__`` block imports its own main
    ]
    assert not wrong, wrong
