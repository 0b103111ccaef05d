"""Properties of the code base as a whole: no module of the project warns of deprecation on
import (the project has made no release, so nothing is deprecated)."""

from __future__ import annotations

import subprocess
import sys

IMPORT_ALL = r"""
import importlib, pkgutil
for package in ("common", "diffusion_transformer", "gpt_checkpoints", "gangealing"):
    root = importlib.import_module(package)
    for info in pkgutil.walk_packages(root.__path__, package + "."):
        importlib.import_module(info.name)
print("imported")
"""


def test_no_module_of_the_project_emits_a_deprecation_warning_on_import():
    proc = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", IMPORT_ALL],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0 and "imported" in proc.stdout, proc.stderr[-3000:]
