"""GANgealing: ``python -m gangealing.train generator=<stylegan2.pt>`` (thesis Sec. 4.3).

Trains the Spatial Transformers and the target mode on GAN-supervised pairs from a frozen
StyleGAN2 (``module.GangealingModule``). ``resume=<run dir>`` continues a run; the generator must
be the same file (checked by fingerprint). At the end it writes ``checkpoints/last.ckpt`` and
``congealer.pt`` (EMA transformers, modes, test-time config), which ``gangealing.congeal``,
``gangealing.propagate`` and ``gangealing.pck`` read.
"""

from __future__ import annotations

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from common.checkpoint import atomic_save
from common.cli import hydra_main
from common.training import build_trainer
from common.training.runs import Export, Job, TrainResult, fit_and_export, run_job
from gangealing.training.module import GangealingModule


def build_module(cfg: DictConfig) -> GangealingModule:
    """The GANgealing LightningModule of a ``train`` config (its ``module`` node)."""
    return instantiate(cfg.module)


def train(cfg: DictConfig) -> TrainResult | None:
    """``None`` when a rerun multirun skips this job because it finished before."""
    return run_job(cfg, _fit)


def _fit(cfg: DictConfig, job: Job) -> TrainResult:
    run_dir = job.run_dir
    L.seed_everything(cfg.seed, workers=True)
    module = build_module(cfg)
    trainer: L.Trainer = build_trainer(cfg)

    def export(trainer: L.Trainer) -> Export:
        congealer = run_dir / "congealer.pt"
        if trainer.is_global_zero:
            atomic_save(module.export(), congealer)
        usage = f"python -m gangealing.congeal congealer={congealer} images=<folder>"
        return Export(congealer, "congealer", usage)

    return fit_and_export(job, trainer, module, export)


# What makes sense for each number this command reads (common.errors.check_values).
CHECKS = {
    "seed": "int>=0",
    "resolution": "int>=8",
    "num_modes": "int>=1",
    "num_components": "int>=1",
    "cutoff": "int>=0",
    "pca_samples": "int>=1",
    "tv_weight": ">=0",
    "identity_weight": ">=0",
    "psi_anneal_steps": "int>=0",
    "optim.lr": ">0",
    "optim.mode_lr": ">0",
    "batch_size": "int>=1",
    "ema_decay": "[0,1]",
    "checkpoint_every": "int>=0",
    "model.input_size": "int>=8|null",
}


def _legacy_transform(value: str) -> list[str]:
    """``transform=`` of the flat config: paper, or the small trunk's similarity/flow/composed."""
    return (
        ["model=stn/paper"] if value == "paper" else ["model=stn/small", f"model.transform={value}"]
    )


# The keys before the Spatial Transformer became the model group (one release).
RENAMED = {
    "transform": _legacy_transform,
    "stn.": "model.",
    "stn_lr": "optim.lr",  # the learning rates under optim, as in every training command
    "mode_lr": "optim.mode_lr",
}


@hydra_main(
    "train",
    input_paths=("generator", "resume", "loss.backbone_path", "loss.checkpoint_path"),
    checks=CHECKS,
    legacy_flags=RENAMED,
)
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    from gangealing.train import main as _main

    _main()
