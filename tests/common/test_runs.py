"""``common.runs`` (one folder and one W&B run per job) and ``common.cli`` (override spellings)."""

from __future__ import annotations

import json
import sys
import types
from importlib.metadata import requires

import pytest
from omegaconf import OmegaConf

from common.cli import default_groups, normalize_overrides
from common.runs import RunFolderError, latest_checkpoint, read_job, start_job


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
    (tmp_path / "run" / "checkpoints" / "last.ckpt").write_bytes(b"x")
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


def test_latest_checkpoint_falls_back_to_the_newest_periodic_one(tmp_path):
    folder = tmp_path / "checkpoints"
    assert latest_checkpoint(tmp_path) is None
    folder.mkdir()
    for step in (20, 100, 40):
        (folder / f"step{step:07d}.ckpt").write_bytes(b"x")
    assert latest_checkpoint(tmp_path).name == "step0000100.ckpt"  # killed during last.ckpt
    (folder / "last.ckpt").write_bytes(b"x")
    assert latest_checkpoint(tmp_path).name == "last.ckpt"


def test_override_spellings_from_other_hydra_projects(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text(
        "defaults:\n  - model: tiny\n  - trainer: cpu\n  - _self_\n  - experiment: digits\n"
        "  - optional local: none\n"
    )
    groups = default_groups(config)
    assert groups == {"model", "trainer", "experiment", "local"}
    args = ["+experiment=digits_sweep", "experiment=null", "++model=s", "+new.key=1", "patch=2"]
    assert normalize_overrides(args, groups) == [
        "experiment=digits_sweep",
        "~experiment",
        "model=s",
        "+new.key=1",  # not a group: a real append
        "patch=2",
    ]
    assert normalize_overrides(["hydra/launcher=local", "-m"], groups) == [
        "hydra/launcher=local",
        "-m",
    ]


def test_common_declares_what_its_shared_configs_need():
    """conf/hydra/launcher (submitit) and conf/logger/wandb.yaml ship in common, so an install of
    common + one package can use hydra/launcher=local and logger=wandb."""
    needs = " ".join(requires("genmodels-common"))
    assert "hydra-submitit-launcher" in needs and "wandb" in needs


def test_job_names_show_the_swept_overrides_their_run_name_does_not(tmp_path):
    from common.runs import expected_jobs, job_name

    (tmp_path / "multirun.yaml").write_text(
        "hydra:\n  sweeper:\n    params:\n      seed: 0,1\n"
        "  overrides:\n    task: ['model=b,s', 'patch=4', 'optim.lr=1e-3,1e-4']\n"
    )
    jobs = expected_jobs(tmp_path)
    assert len(jobs) == 8 and jobs[0] == ["seed=0", "model=b", "patch=4", "optim.lr=0.001"]
    assert job_name("DiT-B-4-digits", jobs[0], tmp_path) == "DiT-B-4-digits-seed=0-optim.lr=0.001"
    assert job_name("DiT-S-4-digits", ["model=s", "patch=4"], tmp_path) == "DiT-S-4-digits"
    assert job_name("gpt-mlp_digits", ["model=s"], tmp_path / "nowhere") == "gpt-mlp_digits"
