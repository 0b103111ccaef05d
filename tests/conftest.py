"""Shared test setup: no W&B calls, deterministic CPU threads, a GPU marker that skips cleanly,
and the tiny VAE folder that latent-space tests share.

Under pytest-xdist (``make test`` runs one worker per core) each worker and the commands it
starts compute on one thread, so the workers do not compete for the cores."""

from __future__ import annotations

import os
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"  # before torch is imported, and for every child process

import lightning.pytorch  # noqa: F401 (before any capsys: its log handler keeps the real stderr)
import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HYDRA_FULL_ERROR", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def tiny_vae(tmp_path_factory) -> Path:
    """A randomly initialised diffusers AutoencoderKL (downsampling by 2) in a local folder."""
    from diffusers import AutoencoderKL

    path = tmp_path_factory.mktemp("vae")
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 8),
        norm_num_groups=4,
        sample_size=16,
    )
    vae.save_pretrained(path)
    return path


@pytest.fixture
def cli_main(monkeypatch, capsys, tmp_path):
    """Run a command's real ``main()`` in-process, ``sys.argv`` set as a shell would, in
    ``tmp_path`` and without ``HYDRA_FULL_ERROR``, expecting it to stop on a user error; returns
    (exit code, stderr). Much faster than a subprocess; ``common.cli`` does the error handling
    either way."""
    import importlib
    import sys

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setenv("WANDB_MODE", "disabled")

    def _run(module: str, *args: str) -> tuple[int, str]:
        from hydra.core.global_hydra import GlobalHydra

        main = importlib.import_module(module).main
        GlobalHydra.instance().clear()
        monkeypatch.setattr(sys, "argv", [module, *args])
        capsys.readouterr()
        try:
            with pytest.raises(SystemExit) as stop:
                main()
        finally:
            GlobalHydra.instance().clear()
        return stop.value.code, capsys.readouterr().err

    return _run


@pytest.fixture
def run_main(monkeypatch, capsys, tmp_path):
    """Run a command's real ``main()`` in-process, ``sys.argv`` set as a shell would, in
    ``tmp_path`` with W&B disabled; returns (exit code, stdout, stderr), exit code 0 when
    ``main`` returns. The in-process twin of ``run_cli``."""
    import importlib
    import sys

    from hydra.core.global_hydra import GlobalHydra

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)

    def _run(module: str, *args: str) -> tuple[int, str, str]:
        main = importlib.import_module(module).main
        GlobalHydra.instance().clear()
        monkeypatch.setattr(sys, "argv", [module, *args])
        capsys.readouterr()
        code = 0
        try:
            main()
        except SystemExit as stop:
            code = stop.code or 0
        finally:
            GlobalHydra.instance().clear()
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return _run
