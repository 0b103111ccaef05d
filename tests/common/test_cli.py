"""``common.cli``: a command that fails before writing anything leaves no run folder behind."""

from __future__ import annotations

from common.cli import _remove_if_empty


def test_a_run_that_failed_on_its_input_leaves_no_folder(cli_main, tmp_path):
    (tmp_path / "outputs" / "mine").mkdir(parents=True)
    code, err = cli_main("diffusion_transformer.gflops", "image_size=-1")
    assert code == 2 and err.startswith("error: image_size=-1 makes no sense")
    code, err = cli_main("gpt_checkpoints.prompt", "ckpt=nowhere.pt")
    assert code == 2 and "nowhere.pt" in err
    # the failed runs' folders and their empty parents are gone; other folders stay
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "outputs",
        "outputs/mine",
    ]


def test_a_missing_data_folder_leaves_no_run_folder(cli_main, tmp_path):
    """The job starts (job.json) before its data module finds the folder missing."""
    code, err = cli_main("diffusion_transformer.train", "data=folder", f"data.root={tmp_path}/x")
    assert code == 2 and "image folder" in err and "does not exist" in err
    assert not (tmp_path / "outputs").exists()


def test_a_run_folder_with_anything_of_its_own_stays(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "outputs" / "pkg" / "train" / "2026"
    (run / ".hydra").mkdir(parents=True)
    (run / "train.log").write_text("")
    (run / "run_id.txt").write_text("abc")
    (run / "job.json").write_text('{"status": "failed", "fit_started": "2026"}')
    _remove_if_empty(run)  # it failed while training: its record stays
    assert (run / "job.json").is_file()
    (run / "job.json").write_text('{"status": "failed"}')
    (run / "checkpoints").mkdir()  # the job wrote something of its own: the folder stays
    _remove_if_empty(run)
    assert (run / "job.json").is_file()
    (run / "checkpoints").rmdir()  # a job stopped by its input before training: nothing to keep
    _remove_if_empty(run)
    assert not (tmp_path / "outputs").exists()
