"""``common.training.runs`` (one folder and one W&B run per job) and ``common.cli`` (override
spellings)."""

from __future__ import annotations

import json
import os
import sys
import types
from importlib.metadata import requires

import pytest
import torch
from omegaconf import OmegaConf

from common.training.runs import RunFolderError, latest_checkpoint, read_job, start_job


def _cfg(run_dir, **extra):
    return OmegaConf.create(
        {"run_dir": str(run_dir), "run_id": None, "resume": None, "project": "p", "group": None,
         "run_name": "r", **extra}
    )  # fmt: skip


def test_a_job_records_its_status_and_a_second_run_cannot_take_its_folder(tmp_path):
    job = start_job(_cfg(tmp_path / "run"))
    assert read_job(tmp_path / "run")["status"] == "running"
    with job:
        pass
    record = read_job(tmp_path / "run")
    assert record["status"] == "finished" and record["run_id"] == job.record["run_id"]
    with pytest.raises(RunFolderError, match=r"already holds a run .*pass resume="):
        start_job(_cfg(tmp_path / "run"))
    (tmp_path / "run" / "checkpoints").mkdir()
    torch.save({}, tmp_path / "run" / "checkpoints" / "last.ckpt")
    resumed = start_job(_cfg(tmp_path / "elsewhere", resume=str(tmp_path / "run")))
    assert resumed.run_dir == tmp_path / "run" and resumed.ckpt_path.name == "last.ckpt"


def test_a_failed_job_is_marked_failed_with_its_root_cause_and_its_wandb_run_finished(
    tmp_path, monkeypatch
):
    finished = []
    fake = types.SimpleNamespace(run=object(), finish=lambda exit_code: finished.append(exit_code))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    job = start_job(_cfg(tmp_path / "run"))
    with pytest.raises(RuntimeError), job:
        try:
            raise ValueError("patch size 3 does not divide the input size 8")
        except ValueError as err:
            raise RuntimeError("Error in call to target 'DiTModule'") from err
    record = json.loads((tmp_path / "run" / "job.json").read_text())
    assert record["status"] == "failed"
    assert record["error"] == "ValueError: patch size 3 does not divide the input size 8"
    assert finished == [1]  # the W&B run of the job is closed as failed, not reused by the next


def test_latest_checkpoint_falls_back_to_the_newest_readable_periodic_one(tmp_path, capsys):

    folder = tmp_path / "checkpoints"
    assert latest_checkpoint(tmp_path) is None
    folder.mkdir()
    for step in (20, 100, 40):
        torch.save({"global_step": step}, folder / f"step{step:07d}.ckpt")
    (folder / "step0000200.ckpt").write_bytes(b"")  # damaged: skipped
    assert latest_checkpoint(tmp_path).name == "step0000100.ckpt"  # killed during last.ckpt
    assert "last.ckpt is missing; resuming from step0000100.ckpt" in capsys.readouterr().out
    (folder / "last.ckpt").write_bytes(b"PK\x03\x04 truncated")
    assert latest_checkpoint(tmp_path).name == "step0000100.ckpt"
    assert "last.ckpt is unreadable" in capsys.readouterr().out
    torch.save({"global_step": 120}, folder / "last.ckpt")
    assert latest_checkpoint(tmp_path).name == "last.ckpt"


def test_common_declares_what_its_shared_configs_need():
    """conf/hydra/launcher (submitit) and conf/logger/wandb.yaml ship in common, so an install of
    common + one package can use hydra/launcher=local and logger=wandb."""
    needs = " ".join(requires("genmodels-common"))
    assert "hydra-submitit-launcher" in needs and "wandb" in needs


def test_job_names_show_the_swept_overrides_their_run_name_does_not(tmp_path):
    from common.training.runs import expected_jobs, job_name

    (tmp_path / "multirun.yaml").write_text(
        "hydra:\n  sweeper:\n    params:\n      seed: 0,1\n"
        "  overrides:\n    task: ['model=b,s', 'patch=4', 'optim.lr=1e-3,1e-4']\n"
    )
    jobs = expected_jobs(tmp_path)
    assert len(jobs) == 8 and jobs[0] == ["seed=0", "model=b", "patch=4", "optim.lr=0.001"]
    assert job_name("DiT-B-4-digits", jobs[0], tmp_path) == "DiT-B-4-digits-seed=0-optim.lr=0.001"
    assert job_name("DiT-S-4-digits", ["model=s", "patch=4"], tmp_path) == "DiT-S-4-digits"
    assert job_name("gpt-mlp_digits", ["model=s"], tmp_path / "nowhere") == "gpt-mlp_digits"


def test_one_writer_per_folder_and_stale_locks_are_taken_over(tmp_path, capsys):
    import subprocess
    import sys

    from common.training.runs import LOCK_FILE, acquire_lock, release_lock

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "run").mkdir()
        lock = tmp_path / "run" / LOCK_FILE
        import socket

        lock.write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname()}))
        with pytest.raises(RunFolderError, match=rf"in use by process {sleeper.pid}"):
            start_job(_cfg(tmp_path / "run"))
        lock.write_text(json.dumps({"pid": 1, "host": "other-node"}))
        with pytest.raises(RunFolderError, match=r"on host other-node.*delete .*\.lock"):
            acquire_lock(tmp_path / "run")
    finally:
        sleeper.kill()
        sleeper.wait()
    lock.write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname()}))
    mine = acquire_lock(tmp_path / "run")  # its process is gone: taken over
    assert f"stale lock of process {sleeper.pid}" in capsys.readouterr().out
    assert json.loads(mine.read_text())["pid"] == os.getpid()
    release_lock(mine)
    assert not mine.exists()


def test_orphan_temporary_files_are_removed_at_the_next_start(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    orphan = run / "checkpoints" / ".last.ckpt.abc123.tmp"
    orphan.write_bytes(b"half a checkpoint")
    with start_job(_cfg(run)):
        assert not orphan.exists()
    assert "left by an interrupted write" in capsys.readouterr().out
