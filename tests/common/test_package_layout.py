"""``common``'s parts as its imports show them (no cycles, each part imports only those below it)
and the former flat module names, which import for one release as the moved modules.

Bottom to top: the modules every command uses (``errors`` <- ``checkpoint``, ``devices``,
``config``, ``cli``), then ``nn``, ``data``, ``diffusion``, ``metrics``, ``training``. Every
import counts, those inside functions too; ``common`` imports none of the three packages.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import common
from tests.layout import find_cycle, imports, package_modules, upward_imports

ROOT = Path(common.__file__).parent
LAYERS = [
    "errors", "checkpoint", "devices", "config", "cli",
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


def test_the_former_module_names_import_the_moved_modules_with_a_warning():
    """One release of grace: ``import common.layers`` is ``common.nn.layers`` itself (so saved
    configs naming ``common.layers.GPT2Block`` resolve), with a DeprecationWarning naming it; the
    same for the modules the packages moved (``common.register_moved``). A fresh interpreter, so
    that no test has imported a former name before."""
    code = """
import importlib, json, warnings
import common, gangealing, gpt_checkpoints
lines = {}
for old, new in sorted(common._moved.items()):
    module = importlib.import_module(new)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert importlib.import_module(old) is module and module.__spec__.name == new
    lines[old] = [str(w.message) for w in seen if w.category is DeprecationWarning]
print(json.dumps(lines))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = json.loads(out.stdout)
    assert set(common.MOVED) <= set(lines) and "gangealing.stylegan2_ops" in lines
    assert "gpt_checkpoints.models" in lines
    for old, messages in lines.items():
        assert len(messages) == 1 and messages[0].startswith(f"{old} moved to "), (old, messages)
        assert messages[0].endswith(
            "; import it from there (the old name goes in the next release)"
        )
