"""The package's architecture as its imports show it (issue: no cycles, layers visible).

Subpackages form layers, each importing only those below it: ``params`` (parameter space) <-
``tasks`` <- ``dataset`` <- ``model`` <- ``analysis`` <- the command-line entry points at the top
level. Every import counts, those inside functions too.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import gpt_checkpoints
from tests.layout import find_cycle, package_modules, upward_imports

ROOT = Path(gpt_checkpoints.__file__).parent
LAYERS = ["params", "tasks", "dataset", "model", "analysis"]  # bottom to top; CLIs above


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
