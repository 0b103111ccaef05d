"""One DiT training job (Sec. 2.4): seed, data module, ``DiTModule`` and trainer from the composed
``train`` config, fit (or resume), and export of the EMA weights in the official format."""

from __future__ import annotations

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from common.checkpoint import plain_container
from common.training import build_trainer
from common.training.runs import Export, Job, TrainResult, fit_and_export, run_job
from common.training.strategies import full_state_dict
from diffusion_transformer.checkpoints import save_ema
from diffusion_transformer.data import LatentDataModule
from diffusion_transformer.module import REPA_NEEDS_IMAGES


def train(cfg: DictConfig) -> TrainResult | None:
    """Run the job of ``python -m diffusion_transformer.train`` (used by tests too); ``None`` when
    a rerun multirun skips this job because it finished before (``common.training.runs``)."""
    return run_job(cfg, _fit)


def _fit(cfg: DictConfig, job: Job) -> TrainResult:
    run_dir = job.run_dir
    if torch.cuda.is_available():
        tf32 = bool(cfg.get("tf32", True))
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32

    L.seed_everything(cfg.seed, workers=True)
    datamodule = hydra.utils.instantiate(cfg.data.datamodule)
    aligned = float(OmegaConf.select(cfg, "repa.coeff", default=0.0) or 0.0) > 0
    if aligned and isinstance(datamodule, LatentDataModule) and not datamodule.dataset.has_crops:
        raise ValueError(REPA_NEEDS_IMAGES)
    module = hydra.utils.instantiate(cfg.module)
    trainer: L.Trainer = build_trainer(
        cfg,
        {
            "gflops": module.model.gflops(),
            "params": sum(p.numel() for p in module.model.parameters()),
        },
    )

    def export(trainer: L.Trainer) -> Export:
        """The EMA weights as a plain state dict with the official key names, recording the
        architecture, diffusion, VAE and evaluation setting (``checkpoints.save_ema``)."""
        ema_weights = run_dir / "checkpoints" / "ema.pt"
        state = full_state_dict(trainer)  # every rank takes part: FSDP gathers the shards
        if trainer.is_global_zero:
            prefix = "ema.module."
            ema = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            hp = module.hparams
            record = {k: hp.get(k) for k in ("model", "diffusion", "vae", "evaluate")}
            save_ema(ema, ema_weights, plain_container(record))
        grids = [c.last_path for c in trainer.callbacks if getattr(c, "last_path", None)]
        usage = f"python -m diffusion_transformer.sample ckpt={ema_weights}"
        return Export(ema_weights, "EMA weights", usage, grids[-1] if grids else None)

    return fit_and_export(job, trainer, module, export, datamodule=datamodule)
