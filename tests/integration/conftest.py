from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TINY = [
    "model.depth=1",
    "model.hidden_size=32",
    "model.num_heads=2",
    "batch_size=4",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]


def run_cli(
    module: str,
    *args: str,
    cwd: Path,
    check: bool = True,
    env_extra=None,
    timeout: float = 600,
):
    """Run ``python -m module args`` in ``cwd`` with W&B disabled; returns the completed process.

    ``timeout`` (seconds) bounds the run; the ``slow`` benchmarks pass hours for long trainings.
    """
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "1", **(env_extra or {})}
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{module} {args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """Two classes of small RGB images in ImageNet's layout, plus one corrupt file."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for label in ("n01440764", "n01443537"):
        (root / label).mkdir()
        for i in range(5):
            arr = rng.integers(0, 255, (20 + i, 24, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / label / f"img{i}.png")
    (root / "n01443537" / "broken.jpg").write_bytes(b"this is not a jpeg")
    return root
