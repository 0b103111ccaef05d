"""Batched collection equals one run at a time; collection resumes; the store refuses bad data."""

from __future__ import annotations

import json

import pytest
import torch

from gpt_checkpoints.dataset import collection as collect_mod
from gpt_checkpoints.dataset.collection import collect, save_schedule, train_batch
from gpt_checkpoints.dataset.store import CheckpointStore, CorruptShardError
from gpt_checkpoints.tasks import build_task


@pytest.fixture(scope="module")
def task():
    return build_task("mlp_digits", epochs=2)  # 44 iterations


def test_save_schedule_has_initial_final_and_random_middle():
    s = save_schedule(7, iterations=550, checkpoints=200)
    assert len(s) == 200 and s[0] == 0 and s[-1] == 550
    assert (s.diff() > 0).all()
    assert not torch.equal(s, save_schedule(8, 550, 200))  # per-run random iterations
    assert torch.equal(save_schedule(3, 10, 200), torch.arange(11))  # short runs save everything


def test_batched_runs_equal_runs_trained_alone(task):
    together, it_together = train_batch(task, [3, 4, 5], checkpoints=12)
    alone, it_alone = train_batch(task, [4], checkpoints=12)
    assert torch.equal(it_together[1], it_alone[0])
    torch.testing.assert_close(together[1], alone[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(together[0], together[1])


def test_initial_checkpoint_uses_fan_in_uniform_init(task):
    params, _ = train_batch(task, [0], checkpoints=5)
    w = task.layout.unflatten(params[:, 0])
    assert w["fc1.weight"].abs().max() <= 1 / 64**0.5
    assert w["fc2.weight"].abs().max() <= 1 / 10**0.5


def test_collection_writes_shards_with_metrics(task, tmp_path):
    res = collect(task, tmp_path, runs=3, checkpoints_per_run=10, batch_runs=2)
    assert res.trained == 3
    store = CheckpointStore(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["layout"][0] == ["fc1.weight", [10, 64]]
    assert manifest["metrics"] == ["train_loss", "test_loss", "train_error", "test_error"]
    runs = store.load()
    assert runs.params.shape == (3, 10, 760)
    assert torch.equal(runs.seeds, torch.tensor([0, 1, 2]))
    # metrics are the task's evaluation of the stored parameters; training lowers the loss
    recomputed = task.evaluate(runs.params[1])["test_loss"]
    torch.testing.assert_close(runs.metrics["test_loss"][1], recomputed)
    assert runs.metrics["train_loss"][:, -1].max() < runs.metrics["train_loss"][:, 0].min()


def test_killed_collection_resumes_without_loss_or_duplicates(task, tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    collect(task, reference, runs=5, checkpoints_per_run=8, batch_runs=2)

    resumed = tmp_path / "resumed"
    real = collect_mod.train_batch
    calls = {"n": 0}

    def dies_on_second_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(collect_mod, "train_batch", dies_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        collect_mod.collect(task, resumed, runs=5, checkpoints_per_run=8, batch_runs=2)
    assert CheckpointStore(resumed).seeds() == [0, 1]
    assert not list((resumed / "runs").glob(".*tmp"))  # nothing half-written
    monkeypatch.setattr(collect_mod, "train_batch", real)

    res = collect_mod.collect(task, resumed, runs=5, checkpoints_per_run=8, batch_runs=2)
    assert (res.skipped, res.trained) == (2, 3)
    a, b = CheckpointStore(reference).load(), CheckpointStore(resumed).load()
    assert torch.equal(a.seeds, b.seeds)
    torch.testing.assert_close(a.params, b.params, atol=1e-5, rtol=1e-5)


def test_corrupted_shard_is_reported_and_retrained(task, tmp_path):
    collect(task, tmp_path, runs=2, checkpoints_per_run=6, batch_runs=2)
    store = CheckpointStore(tmp_path)
    shard = store.shard_path(1)
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(CorruptShardError, match="run_0000001.safetensors is corrupted.*delete it"):
        store.load()
    with pytest.warns(UserWarning, match="corrupted"):
        res = collect(task, tmp_path, runs=2, checkpoints_per_run=6, batch_runs=2)
    assert res.trained == 1
    assert store.load().params.shape[0] == 2


def test_diverged_or_large_runs_are_filtered(task, tmp_path):
    res = collect(task, tmp_path, runs=2, checkpoints_per_run=6, max_abs=0.05)
    assert res.filtered == 2 and res.trained == 0
    store = CheckpointStore(tmp_path)
    assert store.filtered_seeds() == [0, 1]
    assert "max |w|" in json.loads(store.filtered_path(0).read_text())["reason"]
    assert collect(task, tmp_path, runs=2, checkpoints_per_run=6, max_abs=0.05).skipped == 2


def test_changed_recipe_into_same_folder_is_refused(task, tmp_path):
    collect(task, tmp_path, runs=1, checkpoints_per_run=4)
    other = build_task("mlp_digits", epochs=3)
    with pytest.raises(ValueError, match="different recipe"):
        collect(other, tmp_path, runs=1, checkpoints_per_run=4)


def test_missing_dataset_names_the_collect_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="gpt_checkpoints.collect"):
        CheckpointStore(tmp_path / "nothing").manifest()


def test_collect_reads_data_root_and_records_it(run_main, cli_main, tmp_path):
    """``collect task=mlp_mnist data.root=<torchvision root>`` trains on that data, on
    ``device=``, and records the root for the G.pt trained on the runs (prompt and evaluate read
    it unless ``data.root=`` names another)."""
    from tests.gpt_checkpoints.test_vision_io import N_TRAIN, _make_mnist

    root, out = tmp_path / "torchvision", tmp_path / "mnist_runs"
    _make_mnist(root / "MNIST" / "raw")
    recipe = [f"task.recipe.batch_size={N_TRAIN}", "task.recipe.epochs=2"]
    args = ["task=mlp_mnist", "runs=2", "checkpoints_per_run=3", *recipe, f"out={out}"]
    code, stdout, _ = run_main("gpt_checkpoints.collect", *args, f"data.root={root}", "device=cpu")
    assert code == 0 and "2 stored, 0 filtered" in stdout and "(trained on cpu)" in stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data_root"] == str(root) and manifest["layout"][0][1] == [10, 784]
    made = sorted(p.name for p in out.iterdir())  # the dataset folder is the run folder
    assert made == ["collect.log", "manifest.json", "runs"] and not (tmp_path / "outputs").exists()
    code, err = cli_main("gpt_checkpoints.collect", *args)
    assert code == 2 and "pass its root folder (data.root=/path/to/root" in err.splitlines()[-1]
    code, err = cli_main("gpt_checkpoints.collect", *args, "device=cuda:7")
    if not torch.cuda.is_available():
        assert code == 2 and "no CUDA GPU; pass device=cpu or auto" in err.splitlines()[-1]
    assert len(list((out / "runs").glob("*.safetensors"))) == 2  # failed reruns keep the data
