"""The jobs of the two training commands: ``python -m gangealing.train_gan`` (a StyleGAN2, exported
as ``stylegan2.pt`` in rosinality format) and ``python -m gangealing.train`` (GANgealing, exported
as ``congealer.pt``). Each returns ``None`` when a rerun multirun skips a job that finished
before (``common.training.runs``)."""

from __future__ import annotations

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from common.checkpoint import atomic_save
from common.training import build_trainer
from common.training.runs import Export, Job, TrainResult, fit_and_export, run_job


def train_gangealing(cfg: DictConfig) -> TrainResult | None:
    """Spatial Transformers and target modes from a frozen StyleGAN2 (thesis Sec. 4.3)."""
    return run_job(cfg, _fit_gangealing)


def train_stylegan2(cfg: DictConfig) -> TrainResult | None:
    """A StyleGAN2 on ``cfg.data`` (thesis Ch. 4: the generator GANgealing aligns)."""
    return run_job(cfg, _fit_stylegan2)


def _fit_gangealing(cfg: DictConfig, job: Job) -> TrainResult:
    L.seed_everything(cfg.seed, workers=True)
    module = instantiate(cfg.module)
    trainer: L.Trainer = build_trainer(cfg)

    def export(trainer: L.Trainer) -> Export:
        congealer = job.run_dir / "congealer.pt"
        if trainer.is_global_zero:
            atomic_save(module.export(), congealer)
        usage = f"python -m gangealing.congeal ckpt={congealer} data.root=<folder>"
        return Export(congealer, "congealer", usage)

    return fit_and_export(job, trainer, module, export)


def _fit_stylegan2(cfg: DictConfig, job: Job) -> TrainResult:
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data.datamodule)
    datamodule.setup()  # fail early on a bad data= (missing/empty folder)
    module = instantiate(cfg.module)
    trainer: L.Trainer = build_trainer(cfg)

    def export(trainer: L.Trainer) -> Export:
        generator = job.run_dir / "stylegan2.pt"
        samples = job.run_dir / "samples" / f"step{trainer.global_step:07d}.png"
        if trainer.is_global_zero:
            module.export(generator)
            module.save_samples(samples)
        usage = f"rosinality format; GANgealing: generator={generator}"
        return Export(generator, "StyleGAN2", usage, samples)

    return fit_and_export(job, trainer, module, export, datamodule=datamodule)
