"""Multirun sweeps as a researcher runs them: one W&B run per job in the sweep's group, reruns
that skip finished jobs and resume interrupted ones, failed jobs that do not stop the others, and
the FID-vs-Gflops report logged into the same group.

W&B runs offline (no account) and the tests read its transaction logs (``tests/wandb_records``).
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.integration.conftest import TINY as TINY_DIT
from tests.integration.conftest import run_cli
from tests.wandb_records import offline_runs, read_run

TINY = [*TINY_DIT, "sample_every=0"]
# Scored at steps 1 and 2 (20 samples, 2 DDIM steps, guided on the less noisy half) and at the
# end also with 4 sampling steps.
TINY_EVAL = [
    "eval.cfg_scale=1.5",
    "eval.cfg_interval=[0,0.5]",
    "trainer.max_steps=2",
    "checkpoint_every=2",
    "eval.every_n_steps=1",
    "eval.num_samples=20",
    "eval.batch_size=20",
    "eval.sampler=ddim",
    "eval.steps=2",
    "eval.final_samplers={ddim:[4]}",
]


def _offline_env(tmp_path: Path) -> dict[str, str]:
    return {
        "WANDB_MODE": "offline",
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb_config"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb_cache"),
        "WANDB_SILENT": "true",
    }


def test_sweep_one_wandb_run_per_job_rerun_skips_and_report_joins_the_group(
    tmp_path, monkeypatch, capsys
):
    env = _offline_env(tmp_path)
    # patch 3 does not divide the 8x8 digits: job 1 fails, jobs 0 and 2 still run.
    command = ["-m", *TINY, *TINY_EVAL, "patch=2,3,4", "hydra.sweep.dir=sweep"]
    proc = run_cli(
        "diffusion_transformer.train", *command, cwd=tmp_path, env_extra=env, check=False
    )
    assert proc.returncode != 0 and "patch size 3 does not divide" in proc.stderr
    sweep = tmp_path / "sweep"
    jobs = {int(p.name[0]): p for p in sweep.iterdir() if p.is_dir()}
    records = {n: json.loads((p / "job.json").read_text()) for n, p in jobs.items()}
    assert [records[n]["status"] for n in (0, 1, 2)] == ["finished", "failed", "finished"]
    assert "patch size 3" in records[1]["error"]

    runs = {n: offline_runs(jobs[n] / "wandb") for n in (0, 2)}
    assert [len(r) for r in runs.values()] == [1, 1]  # one run per job, none shared
    first, third = runs[0][0], runs[2][0]
    assert first["id"] != third["id"]
    assert first["id"] == (jobs[0] / "run_id.txt").read_text().strip()
    assert (first["group"], third["group"]) == ("sweep", "sweep")
    assert (first["job_type"], first["name"], third["name"]) == (
        "train",
        "DiT-tiny-2-digits",
        "DiT-tiny-4-digits",
    )
    assert (first["config"]["patch"], third["config"]["patch"]) == (2, 4)
    assert first["config"]["hydra_job"]["num"] == 0 and third["config"]["hydra_job"]["num"] == 2
    assert "patch=4" in third["config"]["hydra_job"]["overrides"]
    assert first["exit_code"] == 0 and "eval/fd_digits" in first["history_keys"]
    rows = [json.loads(line) for line in (jobs[0] / "eval.jsonl").read_text().splitlines()]
    assert {(r["cfg_scale"], tuple(r["cfg_interval"])) for r in rows} == {(1.5, (0.0, 0.5))}
    # The live chart of the group: Gflops and training compute as summary fields of every run.
    assert third["summary"]["gflops"] > first["summary"]["gflops"] * 0.2
    assert third["summary"]["train_compute"] == third["summary"]["gflops"] * 4 * 2 * 3

    # Rerunning the same command skips the finished jobs and retries the failed one.
    rerun = run_cli(
        "diffusion_transformer.train", *command, cwd=tmp_path, env_extra=env, check=False
    )
    assert "job 0: finished before, skipping" in rerun.stdout
    assert "job 2: finished before, skipping" in rerun.stdout
    assert "job 1: failed before, resuming from the start" in rerun.stdout
    assert [len(offline_runs(jobs[n] / "wandb")) for n in (0, 2)] == [1, 1]

    # The report: same project and group, job_type report, its W&B folder under report/.
    from diffusion_transformer.scaling import report

    for key, value in env.items():  # the report runs in this process: W&B offline here too
        monkeypatch.setenv(key, value)
    capsys.readouterr()
    report(sweep, wandb="offline")
    out = capsys.readouterr().out
    assert "missing 1 job(s)" in out and "patch=3" in out and "failed: ValueError" in out
    assert "correlations need at least 3 runs; 2 have results" in out
    (folder,) = (sweep / "report" / "wandb").glob("offline-run-*")
    report_run = read_run(folder)
    assert (report_run["group"], report_run["job_type"]) == ("sweep", "report")
    assert report_run["config"]["missing_jobs"][0].startswith("job 1 (")
    summary, config = report_run["summary"], report_run["config"]
    assert summary["fid_vs_gflops/_type"] == "table-file"
    assert summary["fid_vs_gflops/nrows"] == 2 * 6  # 2 runs x (steps 1, 2, final 4 steps) x 2
    for chart in ("gflops", "train_compute", "sampling_compute", "step", "cpu_seconds", "nfe"):
        assert f"_wandb/visualize/fd_digits_vs_{chart}" in config  # a W&B custom chart
        assert summary[f"fd_digits_vs_{chart}_table/_type"] == "table-file"
    assert summary["figures/metric_vs_gflops/_type"] == "image-file"
    table = json.loads((folder / "files" / summary["fd_digits_vs_gflops_table/path"]).read_text())
    assert table["columns"] == ["name", "gflops", "params", "fd_digits"]
    assert sorted(row[0] for row in table["data"]) == ["DiT-tiny/2", "DiT-tiny/4"]
    steps = json.loads((folder / "files" / summary["fd_digits_vs_step_table/path"]).read_text())
    assert steps["columns"] == ["step", "lineKey", "lineVal"]
    assert sorted((row[1], row[0]) for row in steps["data"]) == [
        ("patch=2 seed 0", 1),
        ("patch=2 seed 0", 2),
        ("patch=4 seed 0", 1),
        ("patch=4 seed 0", 2),
    ]  # one line per run over the training steps, named by its recipe (the swept override)
    correlations = json.loads((sweep / "report" / "correlations.json").read_text())
    assert correlations["runs"] == 2 and len(correlations["missing_jobs"]) == 1


def test_killed_job_resumes_when_the_sweep_is_rerun(tmp_path):
    """SIGKILL the sweep while job 1 trains (after its first checkpoint); the same command then
    skips job 0 and resumes job 1 from its checkpoint, keeping its W&B run id."""
    command = [
        sys.executable,
        "-m",
        "diffusion_transformer.train",
        "-m",
        *TINY,
        "patch=2,4",
        "trainer.max_steps=150",
        "checkpoint_every=10",
        "eval.reference=null",
        "logger=csv",
        "hydra.sweep.dir=sweep",
    ]
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    try:
        while not glob.glob(str(tmp_path / "sweep/1_*/checkpoints/step*.ckpt")):
            assert proc.poll() is None, "the sweep ended before job 1 wrote a checkpoint"
            assert time.monotonic() < deadline, "job 1 wrote no checkpoint in 300 s"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    (job1,) = (tmp_path / "sweep").glob("1_*")
    assert json.loads((job1 / "job.json").read_text())["status"] == "running"
    run_id = (job1 / "run_id.txt").read_text()

    rerun = run_cli("diffusion_transformer.train", *command[3:], cwd=tmp_path)
    assert "job 0: finished before, skipping" in rerun.stdout
    assert f"job 1: running before, resuming from {job1}/checkpoints/" in rerun.stdout
    record = json.loads((job1 / "job.json").read_text())
    assert record["status"] == "finished" and record["resumed_from"]
    assert (job1 / "run_id.txt").read_text() == run_id
    import torch

    state = torch.load(job1 / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 150
