"""SLURM and local launchers (``hydra/launcher=slurm|local``, hydra-submitit-launcher).

The shared configs live in ``common/conf/hydra/launcher`` and are found through the
``pkg://common.conf`` search path. The SLURM test runs the real CLI against a stand-in ``sbatch``
that keeps the submission script and refuses the job; the local test runs a real two-job sweep.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import hydra
import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from tests.integration.conftest import TINY

IMAGENET = ["data.root=/datasets/imagenet256_latents", "data.vae.path=/models/sd-vae-ft-ema"]
BIN = Path(sys.executable).parent


@pytest.fixture
def compose_hydra(tmp_path):
    def _compose(*overrides: str):
        GlobalHydra.instance().clear()
        with initialize_config_module("diffusion_transformer.conf", version_base="1.3"):
            return compose(
                "train",
                overrides=[f"run_dir={tmp_path / 'run'}", *overrides],
                return_hydra_config=True,
            )

    yield _compose
    GlobalHydra.instance().clear()


def run_train(*args: str, cwd: Path, entry: str = "dit-train", env_extra=None):
    """The training CLI as the console script (``dit-train``) or as ``python -m``."""
    if entry == "dit-train":
        command = [shutil.which("dit-train", path=str(BIN)) or "dit-train"]
    else:
        command = [sys.executable, "-m", "diffusion_transformer.train"]
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "1", **(env_extra or {})}
    return subprocess.run(
        [*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_launcher_configs_ship_in_common():
    launchers = files("common.conf") / "hydra" / "launcher"
    assert (launchers / "slurm.yaml").is_file() and (launchers / "local.yaml").is_file()


def test_slurm_launcher_follows_the_trainer(compose_hydra):
    cfg = compose_hydra("hydra/launcher=slurm", "experiment=imagenet256", *IMAGENET)
    assert cfg.hydra.runtime.choices["hydra/launcher"] == "slurm"
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node) == (1, 8, 8)
    assert (launcher.cpus_per_task, launcher.timeout_min, launcher.max_num_timeout) == (10, 2880, 0)
    assert launcher.partition is None and launcher.account is None and launcher.qos is None
    assert cfg.trainer.devices == "auto" and cfg.trainer.num_nodes == 1

    cfg = compose_hydra(
        "hydra/launcher=slurm",
        "experiment=imagenet256",
        *IMAGENET,
        "trainer.num_nodes=4",
        "hydra.launcher.gpus_per_node=4",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.account=lab",
        "hydra.launcher.qos=high",
        "hydra.launcher.mem_gb=480",
        "+hydra.launcher.additional_parameters.mail_type=END",
    )
    launcher = hydra.utils.instantiate(cfg.hydra.launcher)  # what `-m` builds; submits nothing
    params = launcher.params
    assert (params["nodes"], params["gpus_per_node"], params["tasks_per_node"]) == (4, 4, 4)
    assert (params["partition"], params["account"], params["qos"]) == ("gpu", "lab", "high")
    assert params["mem_gb"] == 480 and params["additional_parameters"] == {"mail_type": "END"}


def test_local_launcher_composes(compose_hydra):
    launcher = compose_hydra("hydra/launcher=local").hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.LocalLauncher")
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node) == (1, 0, 1)
    assert launcher.timeout_min == 1440


def test_slurm_submission_script_of_a_study(tmp_path):
    """``-m experiment=scaling_grid`` becomes one job array of 12 runs with the requested nodes."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sbatch").write_text(
        '#!/bin/sh\ncp "$1" "$SBATCH_SCRIPT"\necho "sbatch: error: no cluster here" >&2\nexit 1\n'
    )
    (fake / "srun").write_text("#!/bin/sh\nexit 1\n")
    for script in fake.iterdir():
        script.chmod(0o755)
    proc = run_train(
        "-m",
        "hydra/launcher=slurm",
        "experiment=scaling_grid",
        *IMAGENET,
        "trainer.num_nodes=2",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.account=lab",
        "hydra.launcher.qos=high",
        "+hydra.launcher.additional_parameters.mail_type=END",
        "hydra.sweep.dir=sweep",
        cwd=tmp_path,
        env_extra={
            "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}",
            "SBATCH_SCRIPT": str(tmp_path / "submission.sh"),
        },
    )
    assert proc.returncode != 0 and "no cluster here" in proc.stderr, proc.stderr[-3000:]
    assert "#11 : model=xl patch=2" in proc.stdout + proc.stderr
    lines = set((tmp_path / "submission.sh").read_text().splitlines())
    for flag in (
        "--array=0-11%12",
        "--nodes=2",
        "--ntasks-per-node=8",
        "--gpus-per-node=8",
        "--cpus-per-task=10",
        "--time=2880",
        "--partition=gpu",
        "--account=lab",
        "--qos=high",
        "--mail-type=END",
    ):
        assert f"#SBATCH {flag}" in lines, flag


@pytest.mark.parametrize(
    "entry",
    # "python -m" runs train.py as __main__; submitit must still pickle main by reference
    [pytest.param("dit-train", marks=pytest.mark.slow), "python -m"],
)
def test_local_launcher_runs_a_sweep(tmp_path, entry):
    proc = run_train(
        "-m",
        "hydra/launcher=local",
        "model=tiny",
        "patch=2,4",
        *TINY,
        "trainer.max_steps=2",
        "logger=none",
        "callbacks=none",
        "hydra.sweep.dir=sweep",
        cwd=tmp_path,
        entry=entry,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = tmp_path / "sweep"
    runs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert runs == ["0_DiT-tiny-2", "1_DiT-tiny-4"]
    for run in runs:
        assert (sweep / run / "checkpoints" / "last.ckpt").is_file()
        assert (sweep / run / "checkpoints" / "ema.pt").is_file()
    logs = list((sweep / ".submitit").glob("*/*_log.out"))
    assert len(logs) == 2 and all("checkpoint    :" in log.read_text() for log in logs)
