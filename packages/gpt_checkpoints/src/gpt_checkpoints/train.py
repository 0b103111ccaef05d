"""Pre-train G.pt: ``python -m gpt_checkpoints.train task=mlp_digits metric=test_loss``.

Reads a checkpoint dataset built by ``gpt_checkpoints.collect`` (``dataset=`` defaults to
``checkpoints/<task>``), fits the parameter normalisation and metric range on its training split,
trains with AdamW and an EMA, and writes ``checkpoints/last.ckpt`` (resumable with
``resume=<run dir>``) and ``gpt.safetensors`` (EMA weights + everything needed to prompt).
"""

from __future__ import annotations

import logging

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from common.cli import hydra_main
from common.training import build_trainer
from common.training.runs import Export, Job, TrainResult, fit_and_export, run_job
from gpt_checkpoints.dataset.datamodule import CheckpointDataModule
from gpt_checkpoints.dataset.store import METRIC_UNITS
from gpt_checkpoints.model.official import PRESETS

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> TrainResult | None:
    """``None`` when a rerun multirun skips this job because it finished before."""
    return run_job(cfg, _fit)


def _fit(cfg: DictConfig, job: Job) -> TrainResult:
    run_dir = job.run_dir
    L.seed_everything(cfg.seed, workers=True)
    datamodule = CheckpointDataModule(
        cfg.dataset,
        cfg.metric.name,
        batch_size=cfg.batch_size,
        test_fraction=cfg.test_fraction,
        seed=cfg.seed,
        max_runs=cfg.get("max_runs"),
        initial_fraction=cfg.get("initial_fraction", 0.0),
    )
    manifest = datamodule.manifest
    if manifest["task"] != cfg.task.name:
        raise ValueError(
            f"the dataset at {cfg.dataset} holds task {manifest['task']!r} but task="
            f"{cfg.task.name}; pass the matching task= or dataset="
        )
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    official = model_cfg.get("architecture") == "official"
    if official:  # the released recipe: one openai_coeff for all parameters, raw metrics
        coeff = PRESETS[model_cfg["preset"]]["openai_coeff"] if model_cfg.get("preset") else None
        coeff = model_cfg.pop("openai_coeff", coeff)
        if coeff is None:
            raise ValueError("model.architecture=official needs a preset or model.openai_coeff")
        layer_scales = [float(coeff)] * len(datamodule.layout.entries)
    else:
        normalizer = datamodule.normalizer(per_layer=cfg.normalization == "per_layer")
        layer_scales = normalizer.layer_scales
    module = instantiate(cfg.module)(
        model=model_cfg,
        layout=datamodule.layout.to_list(),
        task={
            "name": cfg.task.name,
            "data_root": cfg.task.get("data_root"),
            "recipe": manifest["recipe"],
        },
        metric_range=list(datamodule.metric_range()),
        metric_units={k: v for k, v in METRIC_UNITS.items() if k == cfg.metric.name},
        layer_scales=layer_scales,
        metric_encoding="raw" if official else "range",
        permutation_groups=datamodule.permutation_groups,
    )
    trainer: L.Trainer = build_trainer(cfg)

    def export(trainer: L.Trainer) -> Export:
        path = module.export(run_dir / "gpt.safetensors")
        usage = f"python -m gpt_checkpoints.evaluate gpt={path}"
        return Export(path, "G.pt weights", usage)

    return fit_and_export(job, trainer, module, export, datamodule=datamodule)


# What makes sense for each number this command reads (common.errors.check_values).
CHECKS = {
    "seed": "int>=0",
    "batch_size": "int>=1",
    "model.depth": "int>=1|null",
    "model.hidden_size": "int>=1|null",
    "model.num_heads": "int>=1|null",
    "model.max_token_size": "int>=1|null",
    "test_fraction": "(0,1)",
    "initial_fraction": "[0,1]",
    "max_runs": "int>=1|null",
    "optim.lr": ">0",
    "optim.warmup_steps": "int>=0",
    "optim.weight_decay": ">=0",
    "ema_decay": "[0,1]",
    "checkpoint_every": "int>=0",
    "diffusion.diffusion_steps": "int>=1",
    "diffusion.sampling_steps": "int>=1|null",
}


# Former spellings, kept one release with a deprecation line (the key of DiT's diffusion=ddpm).
LEGACY = {"diffusion.steps": "diffusion.diffusion_steps"}


@hydra_main(
    "train",
    input_paths=("dataset", "resume", "task.data_root"),
    checks=CHECKS,
    legacy_flags=LEGACY,
)
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    from gpt_checkpoints.train import main as _main

    _main()
