"""The digits experiment of docs/gpt_digits end to end (slow: about 31 minutes on two cores).

The documented commands, run for real: collect 10,000 digits-MLP runs of 50 checkpoints, pre-train
the CPU G.pt with neuron tokens (``model=neuron``, 8,000 steps), evaluate one-step training
against tuned SGD/Adam (Fig. 3.3) and prompt alignment (Sec. 3.4.4) on unseen random networks.
"""

from __future__ import annotations

import json

import pytest

from tests.integration.conftest import run_cli


@pytest.mark.slow
def test_digits_gpt_beats_one_step_of_sgd_and_adam(tmp_path):
    ds = tmp_path / "checkpoints" / "mlp_digits"
    run_cli(
        "gpt_checkpoints.collect",
        "runs=10000",
        "checkpoints_per_run=50",
        f"out={ds}",
        cwd=tmp_path,
        timeout=3600,
    )
    run_dir = tmp_path / "run"
    run_cli(
        "gpt_checkpoints.train",
        f"dataset={ds}",
        "model=neuron",
        "logger=none",
        "trainer.enable_progress_bar=false",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
        timeout=3 * 3600,
    )
    out = tmp_path / "eval"
    run_cli(
        "gpt_checkpoints.evaluate",
        f"ckpt={run_dir}",
        f"out={out}",
        "analyses=[one_step,alignment]",
        "sampler=ddim",
        "sampling_steps=2",
        cwd=tmp_path,
    )
    results = json.loads((out / "results.json").read_text())
    assert results["one_step_gpt"] < results["one_step_best_sgd"]
    assert results["one_step_gpt"] < results["one_step_best_adam"]
    assert results["one_step_gpt"] < 0.8 * results["initial"]
    assert results["prompt_alignment_r2"] > MIN_R2


# The target; the documented run reaches 0.945 with DDIM-2 (docs/gpt_digits/README.md),
# this test's own run 0.944.
MIN_R2 = 0.8
