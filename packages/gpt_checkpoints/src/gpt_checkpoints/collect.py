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


@hydra_main("collect", checks=CHECKS)
def main(cfg: DictConfig) -> None:
    from gpt_checkpoints.dataset.collection import collect_dataset

    collect_dataset(cfg)


if __name__ == "__main__":
    from gpt_checkpoints.collect import main as _main

    _main()
