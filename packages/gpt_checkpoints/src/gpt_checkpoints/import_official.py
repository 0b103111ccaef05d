"""Import a released G.pt checkpoint dataset into this package's store:

    python -m gpt_checkpoints.import_official dataset=checkpoint_datasets/mnist preset=mnist_loss \\
        out=checkpoints/mnist_official

Reads the LMDB run folders run by run and writes one safetensors shard per run
(``dataset.official.import_dataset``), so ``train``, ``evaluate`` and the memorisation analysis
use it like a collected dataset. Resumable: rerunning skips the runs already imported. The network
is the preset's task network (or ``task=``); its tensor sizes must equal the dataset's ``_arch``
entries. Metrics keep the official units (errors in percent). The shards' ``iteration`` is
``epoch * 100000 + iteration within the epoch`` (the official keys ``ep<E>_it<I>``), monotone in
training time.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from common.cli import hydra_main


@hydra_main("import_official")
def main(cfg: DictConfig) -> None:
    from gpt_checkpoints.dataset.official import import_dataset
    from gpt_checkpoints.model.official import PRESETS

    if cfg.get("preset") and cfg.preset not in PRESETS:
        raise ValueError(f"unknown preset {cfg.preset!r}; choose one of {', '.join(PRESETS)}")
    task = cfg.get("task") or (PRESETS[cfg.preset]["task"] if cfg.get("preset") else None)
    if task is None:
        raise ValueError("pass preset=<mnist_loss|cifar10_loss|...> or task=<name> of the dataset")
    result = import_dataset(cfg.dataset, cfg.out, task)
    print(
        f"runs          : {result['imported']} imported, {result['skipped']} already there "
        f"({result['runs']} in {cfg.dataset})"
    )
    out = Path(result["out"]).resolve()
    metric = f" metric={PRESETS[cfg.preset]['metric']}" if cfg.get("preset") else ""
    print(f"dataset       : {out}")
    print(f"next          : python -m gpt_checkpoints.train task={task} dataset={out}{metric}")


if __name__ == "__main__":
    main()
