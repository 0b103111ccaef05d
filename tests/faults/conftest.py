"""Fault injection for the training entry points, from outside the code under test.

``kill_on_save_env(tmp_path, target, nth)`` returns environment variables that make a child
Python process SIGKILL itself at the ``nth`` atomic rename onto a file named ``target``
(``last.ckpt``, or ``step`` for any periodic checkpoint): a ``sitecustomize.py`` written to
``tmp_path`` wraps ``os.replace`` at interpreter start. The temporary file of that save is
complete on disk, its rename never happens: exactly a job killed in the middle of a checkpoint
write. Nothing in the packages knows about it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SITECUSTOMIZE = """
import os, signal
_target = os.environ["FAULT_KILL_TARGET"]
_nth = int(os.environ["FAULT_KILL_NTH"])
_seen = 0
_replace = os.replace
def replace(src, dst, *args, **kwargs):
    global _seen
    name = os.path.basename(os.fspath(dst))
    if name.endswith(".ckpt") and name.startswith(_target) and not os.environ.get("LOCAL_RANK"):
        _seen += 1
        if _seen == _nth:
            os.kill(os.getpid(), signal.SIGKILL)
    return _replace(src, dst, *args, **kwargs)
os.replace = replace
"""


def kill_on_save_env(tmp_path: Path, target: str, nth: int) -> dict[str, str]:
    folder = tmp_path / "fault_site"
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    path = os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {"PYTHONPATH": path, "FAULT_KILL_TARGET": target, "FAULT_KILL_NTH": str(nth)}


# One-line errors, as a user sees them: no traceback requested.
NO_TRACEBACK = {"HYDRA_FULL_ERROR": "0"}


@pytest.fixture(scope="session")
def gpt_dataset(tmp_path_factory) -> Path:
    """A tiny G.pt checkpoint dataset (4 digits-MLP runs of 6 checkpoints)."""
    from tests.integration.conftest import run_cli

    root = tmp_path_factory.mktemp("gpt_faults")
    data = root / "ds"
    run_cli(
        "gpt_checkpoints.collect",
        "runs=4",
        "checkpoints_per_run=6",
        "batch_runs=4",
        "task.recipe.epochs=1",
        f"out={data}",
        f"hydra.run.dir={root / 'c'}",
        cwd=root,
    )
    return data
