"""Build a checkpoint dataset: ``python -m gpt_checkpoints.collect task=mlp_digits runs=1000``.

Algorithm 1 of the thesis for many runs at once, on ``device=`` (``dataset.collection``).
Re-running a killed collection with the same command finishes it: done runs are skipped, none is
lost or duplicated.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

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
    from common.devices import pick_device
    from gpt_checkpoints.dataset.collection import collect
    from gpt_checkpoints.dataset.store import CheckpointStore
    from gpt_checkpoints.tasks import build_task

    device = pick_device(cfg.device)
    recipe = OmegaConf.to_container(cfg.task.recipe, resolve=True) or {}
    task = build_task(cfg.task.name, data_root=cfg.data.root, **recipe).to(device)
    result = collect(
        task,
        cfg.out,
        runs=cfg.runs,
        checkpoints_per_run=cfg.checkpoints_per_run,
        batch_runs=cfg.batch_runs,
        seed_offset=cfg.seed_offset,
        max_abs=cfg.max_abs,
        data_root=str(Path(cfg.data.root).resolve()) if cfg.data.root else None,
    )
    store = CheckpointStore(cfg.out)
    print(f"checkpoint dataset : {Path(cfg.out).resolve()} (trained on {device})")
    print(
        f"runs               : {len(store.seeds())} stored, {len(store.filtered_seeds())} filtered "
        f"({result.trained} trained now, {result.skipped} already there, "
        f"{result.runs_per_minute:.0f} runs/min)"
    )


if __name__ == "__main__":
    from gpt_checkpoints.collect import main as _main

    _main()
