"""Released G.pt checkpoint datasets: reading the official LMDB layout and importing it.

The dataset is written by the test in the layout the official ``data_gen/train_mnist.py``
writes (``save_checkpoint_lmdb``: raw float32 bytes under ``<run>/ep<EEE>_it<IIIII>.pt``, the
tensor sizes under ``<key>_arch``, ``runs.json`` dumped with ``sort_keys=True``), for the
MNIST MLP (784-10-10): run ``000000`` in its own folder and runs ``000001``/``000002`` fused in
``000001_000002`` (per-run ``runs.json`` records), as ``Gpt/data/dataset_lmdb.py`` reads them.
"""

from __future__ import annotations

import json

import pytest
import torch

lmdb = pytest.importorskip("lmdb")

from gpt_checkpoints.dataset.official import OfficialDataset, is_official_dataset  # noqa: E402
from gpt_checkpoints.dataset.store import CheckpointStore  # noqa: E402
from gpt_checkpoints.tasks import MLP  # noqa: E402

KEYS = ["ep000_it00000.pt", "ep000_it00117.pt", "ep001_it00003.pt", "ep024_it00468.pt"]


def _write_runs(folder, runs: dict[str, torch.Tensor]):
    """``runs``: name -> [C, P] parameters; returns the metrics written."""
    folder.mkdir(parents=True)
    env = lmdb.open(str(folder), map_size=1 << 26)
    records = {}
    sizes = torch.tensor([p.numel() for p in MLP(784).state_dict().values()])
    for name, params in runs.items():
        checkpoints = {}
        with env.begin(write=True) as txn:
            for i, key in enumerate(KEYS):
                full = f"{name}/{key}"
                txn.put(full.encode(), params[i].float().numpy().tobytes())
                txn.put(f"{full}_arch".encode(), sizes.float().numpy().tobytes())
                checkpoints[full] = {
                    "avg_train_loss": 2.3 - 0.5 * i, "avg_train_err": 90.0 - 20 * i,
                    "avg_test_loss": 2.2 - 0.5 * i + int(name) / 100,
                    "avg_test_err": 88.0 - 20 * i,
                }  # fmt: skip
        records[name] = {
            "checkpoints": checkpoints,
            "metadata": {"avg_test_loss": [c["avg_test_loss"] for c in checkpoints.values()]},
        }
    env.close()
    body = records if len(records) > 1 else next(iter(records.values()))
    (folder / "runs.json").write_text(json.dumps(body, indent=2, sort_keys=True))
    return records


@pytest.fixture
def released(tmp_path):
    root = tmp_path / "checkpoint_datasets" / "mnist"
    g = torch.Generator().manual_seed(0)
    params = {n: torch.randn(len(KEYS), 7960, generator=g) for n in ("000000", "000001", "000002")}
    _write_runs(root / "000000", {"000000": params["000000"]})
    _write_runs(root / "000001_000002", {n: params[n] for n in ("000001", "000002")})
    return root, params


def test_the_official_layout_reads_lazily_with_fused_runs(released):
    root, params = released
    assert is_official_dataset(root)
    data = OfficialDataset(root)
    assert [r.name for r in data.runs] == ["000000", "000001", "000002"]
    assert data.parameter_sizes() == [7840, 10, 100, 10]
    run = data.runs[2]
    keys = list(run.checkpoints)
    assert keys == [f"000002/{k}" for k in KEYS]  # training order
    torch.testing.assert_close(data.params(run, keys[3]), params["000002"][3], rtol=0, atol=0)
    torch.testing.assert_close(data.metric(run, "test_error"), torch.tensor([88.0, 68, 48, 28]))
    with pytest.raises(KeyError, match="metric 'return' .train_ret. is not recorded"):
        data.metric(run, "return")
    data.close()


def test_import_writes_the_store_resumably_and_training_reads_it(released, tmp_path, cli_main):
    from gpt_checkpoints.dataset.official import import_dataset

    root, params = released
    out = tmp_path / "store"
    first = import_dataset(root, out, "mlp_mnist")
    assert first == {"imported": 3, "skipped": 0, "runs": 3, "out": str(out)}
    assert import_dataset(root, out, "mlp_mnist")["skipped"] == 3  # resumable
    store = CheckpointStore(out)
    data = store.load()
    torch.testing.assert_close(data.params[1], params["000001"], rtol=0, atol=0)
    assert data.iteration[0].tolist() == [0, 117, 100_003, 2_400_468]
    torch.testing.assert_close(data.metrics["test_loss"][2], torch.tensor([2.22, 1.72, 1.22, 0.72]))
    manifest = store.manifest()
    assert manifest["metric_units"] == {"train_error": "percent", "test_error": "percent"}
    assert manifest["task"] == "mlp_mnist" and manifest["checkpoints_per_run"] == 4
    with pytest.raises(ValueError, match=r"not the cnn_cifar10 network"):
        import_dataset(root, tmp_path / "other", "cnn_cifar10")
    code, err = cli_main("gpt_checkpoints.import_official", f"dataset={root}", f"out={out}")
    assert code == 2 and "pass preset=" in err


def test_import_prints_a_train_command_that_runs_as_printed(released, tmp_path, run_main):
    import shlex

    root, _ = released
    code, stdout, err = run_main(
        "gpt_checkpoints.import_official", f"dataset={root}", "preset=mnist_error", "out=store"
    )
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == [
        "import_official.log", "manifest.json", "runs"
    ]  # the store is the run folder  # fmt: skip
    line = next(ln for ln in stdout.splitlines() if "python -m gpt_checkpoints.train " in ln)
    printed = shlex.split(line.split("python -m gpt_checkpoints.train ")[1])
    assert printed == ["task=mlp_mnist", f"dataset={tmp_path / 'store'}", "metric=test_error"]
    tiny = ["model=tiny", "batch_size=4", "trainer.max_steps=1", "logger=none", "test_fraction=0.4"]
    code, stdout, err = run_main("gpt_checkpoints.train", *printed, *tiny)
    assert code == 0, err


def test_partial_and_wrong_folders_say_what_is_missing(released, tmp_path):
    root, _ = released
    (root / "zz_stray").mkdir()
    with pytest.raises(ValueError, match=r"zz_stray has no data.mdb"):
        OfficialDataset(root)
    (root / "zz_stray").rmdir()
    (root / "000000" / "runs.json").unlink()
    with pytest.raises(ValueError, match=r"000000 has no runs.json: its run did not finish"):
        OfficialDataset(root)
    with pytest.raises(FileNotFoundError, match="download checkpoint_datasets"):
        OfficialDataset(tmp_path / "nowhere")
    assert not is_official_dataset(tmp_path)
