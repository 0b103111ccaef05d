"""GANgealing's architecture as its imports show it: no cycles, inference independent of training.

Subpackages form layers, each importing only those below it: ``stylegan2`` (networks, ops,
augmentation) <- ``align`` (Spatial Transformers, sampling, target modes, congealers) <- ``data``
<- ``apps`` (congealing, propagation, pre-processing, correspondence) <- ``eval`` (PCK and its
benchmarks) <- ``training`` (LightningModules, losses). The commands are the top-level modules,
thin: they compose a config and call one library function.
"""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import gangealing
from tests.layout import find_cycle, imports, package_modules, upward_imports

ROOT = Path(gangealing.__file__).parent
LAYERS = ["stylegan2", "align", "data", "apps", "eval", "training"]  # bottom to top; CLIs above
COMMANDS = {
    "train", "train_gan", "cluster_classifier", "congeal", "propagate", "preprocess", "pck",
}  # fmt: skip


def _modules() -> dict[str, Path]:
    return package_modules("gangealing", ROOT)


def test_every_module_imports_and_the_top_level_holds_only_commands():
    modules = _modules()
    for name in modules:
        importlib.import_module(name)
    top = {m.split(".")[1] for m in modules if m.count(".") == 1}
    assert top == COMMANDS | set(LAYERS) | {"conf"}


def test_no_import_cycles():
    assert find_cycle(_modules()) is None


def test_layers_import_only_downwards_and_inference_never_imports_training():
    modules = _modules()
    wrong = upward_imports(modules, LAYERS)
    assert not wrong, wrong
    inference = [m for m in modules if m.split(".")[1:2] in (["align"], ["apps"], ["eval"])]
    for m in inference:
        assert not [n for n in imports(modules[m], modules) if ".training" in n], m


def test_commands_are_not_imported_as_libraries():
    modules = _modules()
    commands = {f"gangealing.{c}" for c in COMMANDS}
    users = {
        f"{m} imports {n}"
        for m, p in modules.items()
        for n in imports(p, modules) & commands
        if m != n
    }
    assert not users, users


def test_commands_import_only_light_modules_at_module_level():
    """``--help`` of a command needs no torch: at module level a command imports only the
    standard library, ``omegaconf``, ``hydra`` and ``common.cli``/``common.errors``; everything
    else is imported inside ``main(cfg)``."""
    light = ("omegaconf", "hydra", "common.cli", "common.errors")
    for command in COMMANDS:
        tree = ast.parse((ROOT / f"{command}.py").read_text())
        for node in tree.body:
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                ok = top in sys.stdlib_module_names or top == "__future__"
                assert ok or name.startswith(light), f"gangealing.{command} imports {name}"
