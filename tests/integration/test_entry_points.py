"""Every command of every package, installed from its wheel and run outside the repository:
``python -m <module> --help``, ``<console script> --cfg job`` and the console script's tab
completion (Hydra's ``-sc query=bash`` with ``COMP_LINE``, what ``-sc install=bash`` installs)
work the same everywhere (one CLI convention, configs that travel inside the wheels), and none of
them imports torch: ``--help`` prints in well under a second.

The wheels are built once and unpacked into a folder on ``PYTHONPATH``; one subprocess, started
in an empty folder, runs every command in-process (``runpy`` for ``python -m``, the console
script's entry point for ``--cfg job``) and reports what each printed, so the test costs one
interpreter start instead of one per command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ["common", "diffusion_transformer", "gpt_checkpoints", "gangealing"]

DRIVER = r"""
import contextlib, importlib, io, json, os, runpy, sys
from hydra.core.global_hydra import GlobalHydra

def call(fn, argv):
    GlobalHydra.instance().clear()
    sys.argv = argv
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            fn()
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    GlobalHydra.instance().clear()
    return {"code": code, "out": out.getvalue(), "err": err.getvalue()}

report = {}
for script, target in json.loads(sys.argv[1]).items():
    module, _, attr = target.partition(":")
    entry = getattr(importlib.import_module(module), attr)
    report[script] = {
        "module": module,
        "file": importlib.import_module(module).__file__,
        "help": call(lambda: runpy.run_module(module, run_name="__main__"), [module, "--help"]),
        "torch_after_help": "torch" in sys.modules,
        "cfg": call(entry, [script, "--cfg", "job"]),
    }
    first = (report[script]["cfg"]["out"].split(":") or [""])[0].strip()  # the config's first key
    os.environ["COMP_LINE"] = f"{script} {first[:2]}"
    report[script]["complete"] = {"prefix": first, **call(entry, [script, "-sc", "query=bash"])}
print(json.dumps(report))
"""


def _console_scripts() -> dict[str, str]:
    scripts = {}
    for package in PACKAGES:
        meta = tomllib.loads((REPO / "packages" / package / "pyproject.toml").read_text())
        scripts.update(meta["project"].get("scripts", {}))
    return scripts


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("wheels")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp / "wheels"), *(str(REPO / "packages" / p) for p in PACKAGES)],
        check=True,
    )  # fmt: skip
    site = tmp / "site"
    for wheel in (tmp / "wheels").glob("*.whl"):
        zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "WANDB_MODE": "disabled"}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(_console_scripts())],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["_site"] = str(site)
    return result


def test_every_package_declares_a_console_script_per_command():
    scripts = _console_scripts()
    modules = {target.partition(":")[0] for target in scripts.values()}
    for package in PACKAGES[1:]:
        src = REPO / "packages" / package / "src" / package
        commands = {
            f"{package}.{p.stem}"
            for p in src.glob("*.py")
            if p.stem != "__init__" and "def main(" in p.read_text()
        }
        assert commands <= modules, sorted(commands - modules)


@pytest.mark.parametrize("script", sorted(_console_scripts()))
def test_help_and_cfg_job_work_outside_the_repository(report, script):
    entry = report[script]
    assert entry["help"]["code"] == 0, entry["help"]["err"][-2000:]
    assert not entry["torch_after_help"], f"{script} --help imported torch"
    assert "Powered by Hydra" in entry["help"]["out"] or "== Config ==" in entry["help"]["out"]
    assert entry["cfg"]["code"] == 0, entry["cfg"]["err"][-2000:]
    out = entry["cfg"]["out"]
    assert out.strip() and ":" in out.splitlines()[0], out[:500]
    assert entry["file"].startswith(report["_site"])  # the wheel's copy, not the repository's
    complete = entry["complete"]
    assert complete["code"] == 0, complete["err"][-2000:]
    assert complete["prefix"] in complete["out"].replace("=", " ").replace(".", " ").split()


def test_the_composed_configs_are_the_packages_own(report):
    assert "_target_: lightning.pytorch.Trainer" in report["dit-train"]["cfg"]["out"]
    assert "tv_weight: 1000.0" in report["gangealing-train"]["cfg"]["out"]
    stn = "_target_: gangealing.align.official_stn.OfficialComposedSTN"
    assert stn in report["gangealing-train"]["cfg"]["out"]
