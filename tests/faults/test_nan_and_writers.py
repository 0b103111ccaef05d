"""NaN injection into every training loop (a learning rate of 1e10 diverges in a step or two;
the cluster classifier's loop: tests/gangealing/test_cluster_classifier.py) and two writers on
one run folder.

Each loop must stop with a one-line ``error:`` naming the step and what to try, exit with code 2,
write no checkpoint holding NaN/inf and mark its job failed; ``nan_policy=skip`` drops the bad
steps instead, counts them and finishes with finite weights.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from common.checkpoint import find_non_finite, safe_load
from tests.faults.conftest import NO_TRACEBACK
from tests.integration.conftest import TINY, run_cli

DIT = [
    *TINY,
    "eval.reference=null",
    "sample_every=0",
    "checkpoint_every=1",
    "logger=csv",
    "trainer.log_every_n_steps=1",
]


def _assert_stopped_cleanly(proc, run_dir, *phrases):
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for phrase in phrases:
        assert phrase in last, last
    for ckpt in (
        (run_dir / "checkpoints").glob("*.ckpt") if (run_dir / "checkpoints").exists() else ()
    ):
        state = safe_load(ckpt)
        assert (
            find_non_finite({k: state.get(k) for k in ("state_dict", "optimizer_states")}) is None
        )
    assert json.loads((run_dir / "job.json").read_text())["status"] == "failed"
    return last


def _diverge(module: str, *args: str, tmp_path):
    """Run ``module`` in ``tmp_path/run`` (without tracebacks); returns (process, run dir)."""
    run_dir = tmp_path / "run"
    proc = run_cli(
        module, *args, f"hydra.run.dir={run_dir}", cwd=tmp_path, check=False, env_extra=NO_TRACEBACK
    )
    return proc, run_dir


def test_dit_stops_on_the_first_non_finite_step_and_keeps_its_finite_checkpoints(tmp_path):
    proc, run_dir = _diverge(
        "diffusion_transformer.train",
        *DIT,
        "optim.lr=1e10",
        "trainer.max_steps=20",
        tmp_path=tmp_path,
    )
    last = _assert_stopped_cleanly(proc, run_dir, "non-finite gradients at step 1", "optim.lr")
    assert "nan_policy=skip" in last
    assert (run_dir / "checkpoints" / "step0000001.ckpt").is_file()  # the last finite one
    assert not (run_dir / "checkpoints" / "ema.pt").exists()
    rows = (run_dir / "csv" / "metrics.csv").read_text().splitlines()
    assert len(rows) > 1  # the loss curve up to the failure was written, not lost


def test_dit_skip_policy_drops_bad_steps_and_finishes_finite(tmp_path):
    run_dir = tmp_path / "run"
    run_cli(
        "diffusion_transformer.train",
        *DIT,
        "optim.lr=1e10",
        "trainer.max_steps=6",
        "nan_policy=skip",
        "checkpoint_every=6",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    ckpt = safe_load(run_dir / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 6 and find_non_finite(ckpt["state_dict"]) is None
    ema = torch.load(run_dir / "checkpoints" / "ema.pt", weights_only=True)
    assert find_non_finite(ema) is None
    header, *rows = (run_dir / "csv" / "metrics.csv").read_text().splitlines()
    column = header.split(",").index("train/skipped_steps")
    skipped = [float(r.split(",")[column]) for r in rows if r.split(",")[column]]
    assert skipped and max(skipped) == 5  # steps 1..5 overflow; step 0 was applied


def test_gpt_stops_on_nan(tmp_path, gpt_dataset):
    from tests.integration.test_gpt_cli import TINY_TRAIN

    data = gpt_dataset
    proc, run_dir = _diverge(
        "gpt_checkpoints.train",
        f"dataset={data}",
        *TINY_TRAIN,
        "optim.lr=1e10",
        "optim.warmup_steps=0",
        "trainer.gradient_clip_val=null",
        "trainer.max_steps=20",
        tmp_path=tmp_path,
    )
    _assert_stopped_cleanly(proc, run_dir, "non-finite gradients at step", "loss terms train/loss")
    assert not (run_dir / "gpt.safetensors").exists()


def test_stylegan2_stops_on_nan(tmp_path):
    from tests.gangealing.test_gan_training import CLI_OVERRIDES

    proc, run_dir = _diverge(
        "gangealing.train_gan",
        *CLI_OVERRIDES,
        "optim.lr=1e10",
        "trainer.max_steps=20",
        tmp_path=tmp_path,
    )
    _assert_stopped_cleanly(proc, run_dir, "non-finite gradients at step", "first bad gradient")
    assert not (run_dir / "stylegan2.pt").exists()


def test_gangealing_diverging_transformer_is_an_error_not_a_segfault(tmp_path):
    from tests.gangealing.test_gangealing import CLI_TINY, _generator_file

    g = _generator_file(tmp_path / "g.pt")
    proc, run_dir = _diverge(
        "gangealing.train",
        f"generator={g}",
        *CLI_TINY,
        "optim.lr=1e10",
        "optim.mode_lr=1e10",
        "trainer.max_steps=20",
        tmp_path=tmp_path,
    )
    assert proc.returncode != -signal.SIGSEGV
    _assert_stopped_cleanly(proc, run_dir, "optim.lr")
    assert not (run_dir / "congealer.pt").exists()


@pytest.mark.slow  # the lock logic itself: tests/common/test_runs.py
def test_a_second_writer_is_refused_and_a_stale_lock_is_taken_over(tmp_path):
    run_dir = tmp_path / "run"
    args = [*TINY, "eval.reference=null", "sample_every=0", "logger=none", "checkpoint_every=5"]
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "diffusion_transformer.train",
            *args,
            "trainer.max_steps=100000",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
        env={**os.environ, "WANDB_MODE": "disabled"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not list((run_dir / "checkpoints").glob("step*.ckpt")):
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        second = run_cli(
            "diffusion_transformer.train",
            *args,
            "trainer.max_steps=2",
            f"hydra.run.dir={run_dir}",
            cwd=tmp_path,
            check=False,
            env_extra=NO_TRACEBACK,
        )
        assert second.returncode == 2
        assert f"is in use by process {first.pid}" in second.stderr.strip().splitlines()[-1]
        again = run_cli(
            "diffusion_transformer.train",
            *args,
            "trainer.max_steps=2",
            f"resume={run_dir}",
            cwd=tmp_path,
            check=False,
            env_extra=NO_TRACEBACK,
        )
        assert again.returncode == 2 and f"process {first.pid}" in again.stderr  # resume too
    finally:
        first.kill()
        first.wait()
    steps = safe_load(run_dir / "checkpoints" / "last.ckpt")["global_step"]
    out = run_cli(
        "diffusion_transformer.train",
        *args,
        f"trainer.max_steps={steps + 2}",
        f"resume={run_dir}",
        cwd=tmp_path,
    ).stdout
    assert f"stale lock of process {first.pid}" in out
    after = run_cli(
        "diffusion_transformer.train",
        *args,
        "trainer.max_steps=2",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
        check=False,
        env_extra=NO_TRACEBACK,
    )
    assert after.returncode == 2 and "already holds a run" in after.stderr
