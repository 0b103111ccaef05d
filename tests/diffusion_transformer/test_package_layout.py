"""The DiT package's modules: no import cycles, and no module imports a command (the commands are
entry points only; what two of them need lives in a library module)."""

from __future__ import annotations

from pathlib import Path

from tests.layout import find_cycle, imports, package_modules

ROOT = (
    Path(__file__).resolve().parents[2] / "packages/diffusion_transformer/src/diffusion_transformer"
)
COMMANDS = [
    "train",
    "sample",
    "evaluate",
    "report",
    "gflops",
    "extract_latents",
    "export_diffusers",
]


def _modules() -> dict[str, Path]:
    return {
        k: v for k, v in package_modules("diffusion_transformer", ROOT).items() if ".conf" not in k
    }


def test_every_command_has_a_console_script_module():
    assert {f"diffusion_transformer.{c}" for c in COMMANDS} <= set(_modules())


def test_no_import_cycles():
    assert find_cycle(_modules()) is None


def test_nothing_imports_a_command():
    modules = _modules()
    commands = {f"diffusion_transformer.{c}" for c in COMMANDS}
    wrong = [f"{m} imports {n}" for m, p in modules.items() for n in imports(p, modules) & commands
             if n != m]  # fmt: skip
    assert not wrong, wrong
