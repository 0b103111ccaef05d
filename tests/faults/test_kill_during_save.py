"""SIGKILL in the middle of a checkpoint save, then ``resume=<run dir>``, for every training
entry point: the files on disk stay readable, the orphan temporary file and the stale lock of the
killed process are cleaned up at the next start, and the resumed run reaches its last step (for
DiT with the same weights as a run that was never killed).

The kill comes from outside the packages (``tests/faults/conftest.py``: a ``sitecustomize`` that
wraps ``os.replace``), at the n-th rename onto ``last.ckpt`` or a ``stepNNNNNNN.ckpt``.
"""

from __future__ import annotations

import json

import pytest

from common.checkpoint import safe_load
from tests.faults.conftest import kill_on_save_env
from tests.integration.conftest import TINY, run_cli

DIT = [
    *TINY,
    "trainer.max_steps=6",
    "checkpoint_every=2",
    "eval.reference=null",
    "sample_every=0",
    "logger=csv",
]


def _killed_then_resumed(module, args, run_dir, tmp_path, target, nth, max_steps):
    """Run ``module`` until the injected kill, check the wreck, resume, check the result."""
    env = kill_on_save_env(tmp_path, target, nth)
    proc = run_cli(
        module, *args, f"hydra.run.dir={run_dir}", cwd=tmp_path, env_extra=env, check=False
    )
    assert proc.returncode == -9, (proc.returncode, proc.stderr[-2000:])
    orphans = list((run_dir / "checkpoints").glob(".*.tmp"))
    assert len(orphans) == 1, "the killed save leaves its temporary file"
    assert json.loads((run_dir / "job.json").read_text())["status"] == "running"
    assert (run_dir / ".lock").is_file()  # the killed process never released it
    for ckpt in (run_dir / "checkpoints").glob("*.ckpt"):
        safe_load(ckpt)  # every checkpoint on disk is complete
    out = run_cli(module, *args, f"resume={run_dir}", cwd=tmp_path).stdout
    assert "taking over the stale lock" in out and "left by an interrupted write" in out
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))
    assert not (run_dir / ".lock").exists()
    assert json.loads((run_dir / "job.json").read_text())["status"] == "finished"
    assert safe_load(run_dir / "checkpoints" / "last.ckpt")["global_step"] == max_steps
    return out


def test_dit_killed_during_its_first_last_ckpt_resumes_from_the_periodic_one(tmp_path):
    run_dir = tmp_path / "killed"
    out = _killed_then_resumed(
        "diffusion_transformer.train", DIT, run_dir, tmp_path, "last.ckpt", 1, max_steps=6
    )
    assert "last.ckpt is missing; resuming from step0000002.ckpt" in out
    # (that a resumed run equals an uninterrupted one: tests/diffusion_transformer/test_train.py)


@pytest.mark.slow  # the same checkpoint I/O as DiT's, above
def test_gpt_killed_during_a_periodic_save_resumes(tmp_path, gpt_dataset):
    from tests.integration.test_gpt_cli import TINY_TRAIN

    data = gpt_dataset
    args = [f"dataset={data}", *TINY_TRAIN, "trainer.max_steps=6"]
    _killed_then_resumed("gpt_checkpoints.train", args, tmp_path / "run", tmp_path, "step", 2, 6)


@pytest.mark.slow
def test_stylegan2_killed_during_a_periodic_save_resumes_with_the_same_loss_curve(tmp_path):
    """The resumed run's metrics.csv holds every value of an uninterrupted run (no blank cells
    around the step it resumed from), the epoch counter aside."""
    from tests.gangealing.test_gan_training import CLI_OVERRIDES

    args = [a for a in CLI_OVERRIDES if not a.startswith(("logger=", "sample_every="))]
    args += ["logger=csv", "trainer.log_every_n_steps=1", "trainer.max_steps=4"]
    args += ["checkpoint_every=2", "sample_every=0"]
    run_dir = tmp_path / "run"
    _killed_then_resumed("gangealing.train_gan", args, run_dir, tmp_path, "step", 2, 4)
    straight = tmp_path / "straight"
    run_cli("gangealing.train_gan", *args, f"hydra.run.dir={straight}", cwd=tmp_path)

    def curve(folder):
        header, *rows = (folder / "csv" / "metrics.csv").read_text().splitlines()
        keep = [i for i, name in enumerate(header.split(",")) if name != "epoch"]
        return [[row.split(",")[i] for i in keep] for row in [header, *rows]]

    assert curve(run_dir) == curve(straight)


@pytest.mark.slow
def test_gangealing_killed_during_last_ckpt_resumes(tmp_path):
    from tests.gangealing.test_gangealing import CLI_TINY, _generator_file

    g = _generator_file(tmp_path / "g.pt")
    args = [f"generator={g}", *CLI_TINY, "trainer.max_steps=4", "checkpoint_every=2"]
    _killed_then_resumed("gangealing.train", args, tmp_path / "run", tmp_path, "last.ckpt", 2, 4)
