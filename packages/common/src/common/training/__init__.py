"""Training machinery shared by every package's ``train`` command.

``trainer`` (the Lightning ``Trainer`` of a config, safe checkpoint I/O, resume, the resumable
data order; its names are importable from ``common.training``), ``runs`` (one job = one run
folder = one W&B run, ``fit_and_export``), ``ema`` (the EMA of DiT, also under FSDP),
``guards`` (NaN/inf stop or skip), ``strategies`` (DDP/FSDP from YAML), ``loggers``,
``throughput`` (images/s and MFU).
"""

from common.training.trainer import (
    InfiniteSampler,
    SafeCheckpointIO,
    build_trainer,
    is_sharded_checkpoint,
    latest_checkpoint,
    readable_checkpoint,
    resolve_resume,
    resumable_loader,
    step_seed,
    wandb_run_id,
)

__all__ = [
    "InfiniteSampler",
    "SafeCheckpointIO",
    "build_trainer",
    "is_sharded_checkpoint",
    "latest_checkpoint",
    "readable_checkpoint",
    "resolve_resume",
    "resumable_loader",
    "step_seed",
    "wandb_run_id",
]
