"""``common``'s parts as its imports show them (no cycles, each part imports only those below it)
and the former flat module names, which import for one release as the moved modules.

Bottom to top: the modules every command uses (``errors`` <- ``checkpoint``, ``devices``,
``config``, ``cli``), then ``nn``, ``data``, ``diffusion``, ``metrics``, ``training``. Every
import counts, those inside functions too; ``common`` imports none of the three packages.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import common
from tests.layout import find_cycle, imports, package_modules, upward_imports

ROOT = Path(common.__file__).parent
LAYERS = [
    "errors", "checkpoint", "devices", "cli",
    "nn", "data", "diffusion", "metrics", "training",
]  # fmt: skip


def _modules() -> dict[str, Path]:
    return {k: v for k, v in package_modules("common", ROOT).items() if ".conf" not in k}


def test_every_module_imports_and_has_its_place():
    for name in _modules():
        importlib.import_module(name)
        part = name.split(".")[1] if "." in name else None
        assert part is None or part in LAYERS, f"{name}: add its part to LAYERS (bottom to top)"


def test_no_import_cycles():
    assert find_cycle(_modules()) is None


def test_parts_import_only_downwards():
    wrong = upward_imports(_modules(), LAYERS)
    assert not wrong, wrong


def test_common_imports_no_package():
    packages = {"diffusion_transformer", "gpt_checkpoints", "gangealing"}
    known = {**_modules(), **{p: Path() for p in packages}}
    wrong = [m for m, p in _modules().items() if imports(p, known) & packages]
    assert not wrong
