"""Pre-training G.pt from a checkpoint dataset (``python -m gpt_checkpoints.train``; thesis
Algorithm 2, Sec. 3.3): the run folder, resume and export of ``common.training.runs``, the data
split and normalisation of ``dataset.datamodule``, and the ``GptModule`` built by
``hydra.utils.instantiate`` from the ``module`` node of ``conf/train.yaml``.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from common.training import build_trainer
from common.training.runs import Export, Job, TrainResult, fit_and_export, run_job
from gpt_checkpoints.dataset.datamodule import CheckpointDataModule
from gpt_checkpoints.model.official import PRESETS


def train(cfg: DictConfig) -> TrainResult | None:
    """``None`` when a rerun multirun skips this job because it finished before."""
    return run_job(cfg, _fit)


def _fit(cfg: DictConfig, job: Job) -> TrainResult:
    L.seed_everything(cfg.seed, workers=True)
    datamodule = CheckpointDataModule(
        cfg.dataset,
        cfg.metric.name,
        batch_size=cfg.batch_size,
        test_fraction=cfg.test_fraction,
        seed=cfg.seed,
        max_runs=cfg.max_runs,
        initial_fraction=cfg.initial_fraction,
    )
    manifest = datamodule.manifest
    if manifest["task"] != cfg.task.name:
        raise ValueError(
            f"the dataset at {cfg.dataset} holds task {manifest['task']!r} but task="
            f"{cfg.task.name}; pass the matching task= or dataset="
        )
    preset = cfg.model.get("preset")
    if preset:  # the released recipe: one openai_coeff for every tensor (and raw metrics)
        layer_scales = [PRESETS[preset]["openai_coeff"]] * len(datamodule.layout.entries)
    else:  # Sec. 3.3: std 0.538 per tensor or for the whole vector
        layer_scales = datamodule.normalizer(cfg.normalization == "per_layer").layer_scales
    # What only the dataset knows (GptModule's docstring); the rest is the module node's.
    module = instantiate(
        cfg.module,
        layout=datamodule.layout.to_list(),
        permutation_groups=datamodule.permutation_groups,
        task={
            "name": manifest["task"],
            "data_root": manifest.get("data_root"),
            "recipe": manifest["recipe"],
            # the dataset and its split, so that evaluate needs no dataset= (analysis.jobs)
            "dataset": str(Path(cfg.dataset).resolve()),
            "split": {
                "test_fraction": cfg.test_fraction,
                "seed": cfg.seed,
                "max_runs": cfg.max_runs,
            },
        },
        metric_range=list(datamodule.metric_range()),
        layer_scales=layer_scales,
    )
    trainer: L.Trainer = build_trainer(cfg)

    def export(trainer: L.Trainer) -> Export:
        path = module.export(job.run_dir / "gpt.safetensors").resolve()
        return Export(path, "G.pt weights")

    result = fit_and_export(job, trainer, module, export, datamodule=datamodule)
    if trainer.is_global_zero:
        print(f"next          : {next_command('prompt', job.run_dir, module)}")
        print(f"                {next_command('evaluate', job.run_dir, module)}")
    return result


#: Below this many parameters a G.pt is CPU-sized (model=small: 1.3M; model=paper: over 300M):
#: its next commands sample with DDIM in a few steps, the sampler it does best with (README).
CPU_SIZED = 20_000_000


def next_command(command: str, ckpt: str | Path, module) -> str:
    """The full command that runs ``gpt_checkpoints.<command>`` on a trained G.pt, with the fast
    sampler for a CPU-sized model that records full DDPM."""
    line = f"python -m gpt_checkpoints.{command} ckpt={Path(ckpt).resolve()}"
    d = module.diffusion_cfg
    small = sum(p.numel() for p in module.model.parameters()) < CPU_SIZED
    if small and d["sampler"] == "ddpm" and not d["sampling_steps"]:
        line += " sampler=ddim sampling_steps=2"
    return line
