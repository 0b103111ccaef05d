"""Released G.pt checkpoint datasets (``checkpoint_datasets/{mnist,cifar10,cartpole}``): read them
and import them into this package's store (``python -m gpt_checkpoints.import_official``).

Layout, as the official ``data_gen/train_*.py`` write it and ``Gpt/data/dataset_lmdb.py`` reads
it: one LMDB environment per run folder (``<dataset>/<run>/data.mdb``; a folder named
``000012_000013`` holds several fused runs), whose values are raw float32 bytes: the flat
parameters of each checkpoint under ``<run>/ep<EEE>_it<IIIII>.pt`` and the sizes of the network's
tensors under ``<key>_arch``; and a ``runs.json`` (``{"checkpoints": {key: {"avg_test_loss",
"avg_test_err", "avg_train_loss", "avg_train_err"} or {"train_ret"}}, "metadata": {...}}``, per
run when fused). Values are bytes, never pickles. The ``lmdb`` package is an optional dependency
(``pip install lmdb``). Runs are ordered as the official split orders them: its last
``num_test_runs`` are the test runs.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from gpt_checkpoints.dataset.store import CheckpointStore
from gpt_checkpoints.params.layout import ParamLayout
from gpt_checkpoints.tasks import task_network, task_permutation_groups

#: This package's metric names -> the keys of an official runs.json.
OFFICIAL_METRICS = {
    "test_loss": "avg_test_loss",
    "test_error": "avg_test_err",
    "train_loss": "avg_train_loss",
    "train_error": "avg_train_err",
    "return": "train_ret",
}


def _lmdb():
    try:
        import lmdb
    except ImportError:
        raise ImportError(
            "reading a released G.pt checkpoint dataset needs the lmdb package: pip install lmdb "
            "(or pip install genmodels-gpt[official])"
        ) from None
    return lmdb


def is_official_dataset(root: str | Path) -> bool:
    """A folder of run folders each holding an LMDB ``data.mdb`` (and ``runs.json``)."""
    root = Path(root)
    return root.is_dir() and any(p.is_dir() and (p / "data.mdb").is_file() for p in root.iterdir())


@dataclass
class OfficialRun:
    name: str
    folder: Path
    checkpoints: dict[str, dict[str, float]]  # key -> metrics, in the file's (training) order


class OfficialDataset:
    """A released checkpoint dataset folder, read lazily (one LMDB read per checkpoint)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"no checkpoint dataset at {self.root}: download checkpoint_datasets/<task>.zip "
                "of the official G.pt and unzip it there"
            )
        folders = sorted(p for p in self.root.iterdir() if p.is_dir())
        runs: list[OfficialRun] = []
        for folder in folders:
            if not (folder / "data.mdb").is_file():
                raise ValueError(
                    f"{folder} has no data.mdb: not a run of a released G.pt dataset (or a "
                    "partial download); remove it or download the dataset again"
                )
            if not (folder / "runs.json").is_file():
                raise ValueError(
                    f"{folder} has no runs.json: its run did not finish (the official scripts "
                    "write it last); remove that folder or download the dataset again"
                )
            data = json.loads((folder / "runs.json").read_text())
            for name in folder.name.split("_"):  # a fused folder holds several runs
                record = data.get(name, data)
                if "checkpoints" not in record:
                    raise ValueError(f"{folder}/runs.json has no checkpoints for run {name}")
                runs.append(OfficialRun(name, folder, dict(record["checkpoints"])))
        if not runs:
            raise ValueError(f"{self.root} holds no run folders (<run>/data.mdb + runs.json)")
        self.runs = runs
        self._envs: dict[Path, object] = {}

    def _env(self, folder: Path):
        if folder not in self._envs:
            self._envs[folder] = _lmdb().open(
                str(folder), readonly=True, lock=False, readahead=False, meminit=False
            )
        return self._envs[folder]

    def _read(self, folder: Path, key: str) -> torch.Tensor:
        with self._env(folder).begin() as txn:
            value = txn.get(key.encode())
        if value is None:
            raise KeyError(f"{folder}/data.mdb has no entry {key!r}: the dataset is incomplete")
        return torch.frombuffer(bytearray(value), dtype=torch.float32)

    def parameter_sizes(self) -> list[int]:
        """Sizes of the network's tensors (the ``_arch`` entry of the first checkpoint)."""
        run = self.runs[0]
        return self._read(run.folder, f"{next(iter(run.checkpoints))}_arch").long().tolist()

    def params(self, run: OfficialRun, key: str) -> torch.Tensor:
        return self._read(run.folder, key)

    def metric(self, run: OfficialRun, name: str) -> torch.Tensor:
        """One metric of every checkpoint of ``run`` (this package's name, official units)."""
        official = OFFICIAL_METRICS.get(name, name)
        first = next(iter(run.checkpoints.values()))
        if official not in first:
            raise KeyError(
                f"metric {name!r} ({official}) is not recorded in {run.folder}/runs.json "
                f"(found {sorted(first)})"
            )
        return torch.tensor([float(m[official]) for m in run.checkpoints.values()])

    def iter_run(self, run: OfficialRun) -> Iterator[tuple[str, torch.Tensor]]:
        for key in run.checkpoints:
            yield key, self.params(run, key)

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
        self._envs.clear()


# ------------------------------------------------------------------ import into the store
_KEY = re.compile(r"ep(\d+)_it(\d+)")


def _iteration(key: str) -> int:
    m = _KEY.search(key)
    if m is None:
        raise ValueError(f"checkpoint key {key!r} does not follow the official ep<E>_it<I> form")
    return int(m.group(1)) * 100_000 + int(m.group(2))


def import_dataset(src: str | Path, out: str | Path, task: str) -> dict:
    """Import every run of ``src`` not yet in ``out``; returns counts."""
    data = OfficialDataset(src)
    layout = ParamLayout.from_module(task_network(task))
    sizes = data.parameter_sizes()
    if sizes != layout.sizes:
        raise ValueError(
            f"{src} holds networks with tensors of sizes {sizes}, not the {task} network "
            f"({layout.describe()}); pass the matching preset= or task="
        )
    first = next(iter(data.runs[0].checkpoints.values()))
    metrics = [ours for ours, theirs in OFFICIAL_METRICS.items() if theirs in first]
    count = len(data.runs[0].checkpoints)
    store = CheckpointStore(out)
    store.init_manifest(
        {
            "task": task,
            "recipe": {"name": task, "official": True},
            "layout": layout.to_list(),
            "metrics": metrics,
            "checkpoints_per_run": count,
            "permutation_groups": [
                [size, [list(m) for m in members]]
                for size, members in task_permutation_groups(task)
            ],
            "max_abs": math.inf,
            "imported_from": str(Path(src).resolve()),
        }
    )
    done = skipped = 0
    for run in data.runs:
        seed = int(run.name)
        if store.is_done(seed):
            skipped += 1
            continue
        if len(run.checkpoints) != count:
            raise ValueError(
                f"run {run.name} in {run.folder} has {len(run.checkpoints)} checkpoints, the first "
                f"run {count}; this store keeps runs of equal length"
            )
        params = torch.stack([p for _, p in data.iter_run(run)])
        iteration = torch.tensor([_iteration(k) for k in run.checkpoints])
        store.write_run(seed, params, iteration, {m: data.metric(run, m) for m in metrics}, task)
        done += 1
    data.close()
    return {"imported": done, "skipped": skipped, "runs": len(data.runs), "out": str(out)}
