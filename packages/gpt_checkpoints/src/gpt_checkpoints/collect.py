"""Build a checkpoint dataset: ``python -m gpt_checkpoints.collect task=mlp_digits runs=1000``.

Algorithm 1 of the thesis for many runs at once, on ``device=`` (``dataset.collection``).
Re-running a killed collection with the same command finishes it: done runs are skipped, none is
lost or duplicated.
"""

from __future__ import annotations

from omegaconf import DictConfig

from common.cli import hydra_main

# What makes sense for each number this command reads (common.errors.check_values).
CHECKS = {
    "runs": "int>=1",
    "checkpoints_per_run": "int>=2",
    "batch_runs": "int>=1",
    "seed_offset": "int>=0",
    "max_abs": ">0",
}


#: The tasks whose data source reads ``data.root`` (``tasks.sources.load_source``).
DATA_TASKS = ("mlp_mnist", "cnn_cifar10")


@hydra_main("collect", checks=CHECKS)
def main(cfg: DictConfig) -> None:
    from common.cli import default_config
    from common.errors import refuse_unused
    from gpt_checkpoints.dataset.collection import collect_dataset

    if cfg.task.name not in DATA_TASKS:  # issue 28: keys a combination ignores are refused
        why = f"task={cfg.task.name} reads no data folder (only {', '.join(DATA_TASKS)} do)"
        fix = f"pass task={' or task='.join(DATA_TASKS)}"
        refuse_unused(cfg, default_config(), {"data.root": (why, fix)})
    collect_dataset(cfg)


if __name__ == "__main__":
    from gpt_checkpoints.collect import main as _main

    _main()
