"""Every benchmark of ``make bench`` runs at its smallest setting and prints its table.

No timing is asserted (figures live in BENCHMARKS.md); this keeps the scripts in step with the
packages they measure: a renamed module or a changed config there fails here, not at the next
``make bench`` on a GPU machine.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
# script -> (smallest arguments, a line of its table)
SMALLEST = {
    "dit_step": (
        ["--model", "DiT-S/8", "--input-size", "16", "--batch-size", "2", "--steps", "2",
         "--warmup", "1", "--no-compile", "--baseline", "official-style"],
        "| official-style fp32 eager |",
    ),
    "dit_sample": (
        ["--input-size", "16", "--batch-size", "2", "--reps", "1", "--ddpm-steps", "4",
         "--ddim-steps", "2", "--flow-steps", "2"],
        "| DDIM-2 | fp32 | 2 |",
    ),
    "stylegan2_step": (
        ["--steps", "1", "--warmup", "1", "--batch-size", "2", "--resolution", "16"],
        "depthwise (ours)",
    ),
    "gangealing_step": (["--rounds", "1", "--batch", "1", "--size", "128"], "small trunk"),
    "gangealing_congeal": (["--rounds", "1", "--batch", "1"], "iters=3, flips"),
    "gpt_collect": (["--batched-runs", "2", "--single-runs", "1", "--epochs", "1"], "batched"),
}  # fmt: skip


def test_every_benchmark_has_a_smallest_setting():
    assert {p.stem for p in BENCHMARKS.glob("[!_]*.py")} == set(SMALLEST)


@pytest.mark.parametrize("script", sorted(SMALLEST))
def test_benchmark_runs(script):
    args, line = SMALLEST[script]
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{script}.py"), *args],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert line in out.stdout and "failed" not in out.stdout, out.stdout
