"""The jobs of the two training commands: ``python -m gangealing.train_gan`` (a StyleGAN2, exported
as ``stylegan2.pt`` in rosinality format) and ``python -m gangealing.train`` (GANgealing, exported
as ``congealer.pt``). Each returns ``None`` when a rerun multirun skips a job that finished
before (``common.training.runs``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

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


def _default(command: str, key: str) -> int:
    """A number of ``conf/<command>.yaml``, written once there."""
    from importlib.resources import files

    from omegaconf import OmegaConf

    return OmegaConf.load(files("gangealing.conf") / f"{command}.yaml")[key]


def train_command(generator: Path, size: int) -> str:
    """The ``gangealing.train`` command for a ``size``-px generator: its resolution is at most
    the generator's; below 64 px (the released transformer's smallest flow) the small trunk; the
    offline ``pyramid_l1`` loss when LPIPS' VGG-16 backbone is not on disk."""
    from gangealing.training.losses import default_vgg_backbone

    keys = [f"generator={Path(generator).resolve()}"]
    if size < _default("train", "resolution"):
        keys.append(f"resolution={size}")
    if size < 64:
        keys.append("model=stn/small")
    if not default_vgg_backbone().is_file() or importlib.util.find_spec("lpips") is None:
        keys.append("loss.name=pyramid_l1")
    return "python -m gangealing.train " + " ".join(keys)


def congeal_command(congealer: Path, images: Path, size: int) -> str:
    """The ``gangealing.congeal`` command for ``congealer`` on the folder ``images``, at the
    generator's ``size`` when that is below congeal's default."""
    keys = [f"ckpt={Path(congealer).resolve()}", f"data.root={Path(images).resolve()}"]
    if size < _default("congeal", "size"):
        keys.append(f"size={size}")
    return "python -m gangealing.congeal " + " ".join(keys)


def save_generated(congealer: Path, folder: Path, count: int = 16, seed: int = 0) -> int:
    """``count`` samples of the generator a congealer file carries, as PNGs in ``folder`` (the
    images the printed ``congeal`` command aligns when the user has none at hand); returns the
    generator's size."""
    import torch
    from PIL import Image

    from common.data.images import to_uint8
    from gangealing.align.congealer import Congealer

    generator = Congealer.load(congealer).generator
    z = torch.randn(count, generator.style_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        images = torch.cat([generator([c], randomize_noise=False)[0] for c in z.split(8)])
    folder.mkdir(parents=True, exist_ok=True)
    for i, pixels in enumerate(to_uint8(images)):
        Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    return generator.size


def _fit_gangealing(cfg: DictConfig, job: Job) -> TrainResult:
    L.seed_everything(cfg.seed, workers=True)
    module = instantiate(cfg.module)
    trainer: L.Trainer = build_trainer(cfg)

    def export(trainer: L.Trainer) -> Export:
        congealer = job.run_dir / "congealer.pt"
        if trainer.is_global_zero:
            atomic_save(module.export(), congealer)
        samples = job.run_dir / "generated"
        if trainer.is_global_zero:
            size = save_generated(congealer, samples)
        else:
            size = module.generator.size
        usage = (
            f"{congeal_command(congealer, samples, size)}; data.root= holds samples of the "
            "generator: put a folder of your own images there"
        )
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
        usage = train_command(generator, module.g_ema.size)
        return Export(generator, "StyleGAN2", usage, samples)

    return fit_and_export(job, trainer, module, export, datamodule=datamodule)
