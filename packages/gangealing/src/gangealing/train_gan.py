"""Train a StyleGAN2 for GANgealing: ``python -m gangealing.train_gan data=folder data.root=<dir>``.

GANgealing (thesis Ch. 4) aligns a category with a StyleGAN2 generator G trained on it (256x256
center crops in Sec. 4.4.2). With no overrides this trains a tiny 32x32 StyleGAN2 on the offline
``data=photo`` set (warps of a bundled photograph) on the CPU.
``model=stylegan2/paper resolution=256 trainer=gpu`` is the published configuration;
``augment=[color,translation,cutout]`` adds DiffAugment for small datasets.
``resume=<run dir>`` continues a run (same step, optimizers, EMA, path-length mean, data order).
At the end it writes ``checkpoints/last.ckpt`` and ``stylegan2.pt`` (rosinality format), which
the GANgealing stage loads with ``generator=<run dir>/stylegan2.pt``.
"""

from __future__ import annotations

import logging

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from common.cli import hydra_main
from common.training import build_trainer
from common.training.runs import Export, Job, TrainResult, fit_and_export, run_job
from gangealing.data.image_data import BUNDLED_IMAGES, ImageDataModule
from gangealing.training.gan_module import StyleGAN2Module

log = logging.getLogger(__name__)


def build_module(cfg: DictConfig) -> StyleGAN2Module:
    """The StyleGAN2 LightningModule of a ``train_gan`` config (its ``module`` node)."""
    return instantiate(cfg.module)


def train(cfg: DictConfig) -> TrainResult | None:
    """``None`` when a rerun multirun skips this job because it finished before."""
    return run_job(cfg, _fit)


def _fit(cfg: DictConfig, job: Job) -> TrainResult:
    run_dir = job.run_dir
    L.seed_everything(cfg.seed, workers=True)
    datamodule: ImageDataModule = instantiate(cfg.data.datamodule)
    datamodule.setup()  # fail early on a bad data= (missing/empty folder)
    module = build_module(cfg)
    trainer: L.Trainer = build_trainer(cfg)

    def export(trainer: L.Trainer) -> Export:
        generator = run_dir / "stylegan2.pt"
        samples = run_dir / "samples" / f"step{trainer.global_step:07d}.png"
        if trainer.is_global_zero:
            module.export(generator)
            module.save_samples(samples)
        usage = f"rosinality format; GANgealing: generator={generator}"
        return Export(generator, "StyleGAN2", usage, samples)

    return fit_and_export(job, trainer, module, export, datamodule=datamodule)


# What makes sense for each number this command reads (common.errors.check_values).
CHECKS = {
    "seed": "int>=0",
    "resolution": "int>=4",
    "batch_size": "int>=1",
    "data.num_images": "int>=1|null",
    "data.num_workers": "int>=0",
    "mixing": "[0,1]",
    "ema_decay": "[0,1]|null",
    "optim.lr": ">0",
    "regularization.r1_gamma": ">=0",
    "regularization.d_reg_every": "int>=0",
    "regularization.g_reg_every": "int>=0",
    "regularization.path_weight": ">=0",
    "num_samples": "int>=1",
    "sample_every": "int>=0",
    "export_every": "int>=0",
    "checkpoint_every": "int>=0",
}


def _former_data(value: str) -> list[str] | None:
    """``data=<folder>`` / ``data=<photo name>``, the spellings before the data group."""
    if value in ("photo", "folder"):
        return None
    if value in BUNDLED_IMAGES:
        return ["data=photo", f"data.image={value}"]
    return ["data=folder", f"data.root={value}"]


# Former spellings, kept one release: the StyleGAN2 widths before the model group, the data keys
# before the data group.
RENAMED = {
    "gan": "model=stylegan2/{}",
    "gan.": "model.",
    "data": _former_data,
    "hflip": "data.flip",  # as DiT's data.flip
    "num_workers": "data.num_workers",
    "synthetic_size": "++data.num_images",  # read by data=photo only, as before
}


@hydra_main("train_gan", input_paths=("data.root", "resume"), checks=CHECKS, legacy_flags=RENAMED)
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    from gangealing.train_gan import main as _main

    _main()
