"""Import a released G.pt checkpoint dataset into this package's store:

    python -m gpt_checkpoints.import_official src=checkpoint_datasets/mnist preset=mnist_loss \\
        out=checkpoints/mnist_official

Reads the LMDB run folders (``dataset.official.OfficialDataset``) run by run and writes one
safetensors shard per run (``dataset.store.CheckpointStore``), so ``train``, ``evaluate`` and the
memorisation analysis use it like a collected dataset. Resumable: rerunning skips the runs already
imported. The network is the preset's task network (or ``task=``); its tensor sizes must equal the
dataset's ``_arch`` entries. Metrics keep the official units (errors in percent). The shards'
``iteration`` is ``epoch * 100000 + iteration within the epoch`` (the official keys
``ep<E>_it<I>``), monotone in training time.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from omegaconf import DictConfig

from common.cli import hydra_main
from gpt_checkpoints.dataset.official import OFFICIAL_METRICS, OfficialDataset
from gpt_checkpoints.dataset.store import CheckpointStore
from gpt_checkpoints.model.official import PRESETS
from gpt_checkpoints.params.layout import ParamLayout
from gpt_checkpoints.tasks import task_network, task_permutation_groups

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


@hydra_main("import_official", input_paths=("src", "out"))
def main(cfg: DictConfig) -> None:
    task = cfg.get("task") or (PRESETS[cfg.preset]["task"] if cfg.get("preset") else None)
    if cfg.get("preset") and cfg.preset not in PRESETS:
        raise ValueError(f"unknown preset {cfg.preset!r}; choose one of {', '.join(PRESETS)}")
    if task is None:
        raise ValueError("pass preset=<mnist_loss|cifar10_loss|...> or task=<name> of the dataset")
    result = import_dataset(cfg.src, cfg.out, task)
    print(
        f"runs          : {result['imported']} imported, {result['skipped']} already there "
        f"({result['runs']} in {cfg.src})"
    )
    print(f"dataset       : {result['out']} (python -m gpt_checkpoints.train dataset=...)")


if __name__ == "__main__":
    main()
