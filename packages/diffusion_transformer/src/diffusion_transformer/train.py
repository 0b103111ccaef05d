"""Train a DiT: ``python -m diffusion_transformer.train [model=xl patch=2 experiment=...]``.

With no overrides it trains a small DiT on scikit-learn's digits on the CPU and prints where the
sample grid and the checkpoint are. ``resume=<run dir or .ckpt>`` continues a run: same step,
optimizer, EMA, data order, logs and W&B run.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from pathlib import Path

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from common.checkpoint import atomic_save
from common.training import SafeCheckpointIO

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path
    ema_weights: Path
    samples: Path | None
    module: L.LightningModule


def resolve_resume(resume: str) -> tuple[Path, Path]:
    """``resume`` (a run directory or a ``.ckpt`` file) -> (checkpoint, run directory)."""
    path = Path(resume).expanduser()
    ckpt = path / "checkpoints" / "last.ckpt" if path.is_dir() else path
    if not ckpt.is_file():
        raise FileNotFoundError(
            f"cannot resume: no checkpoint at {ckpt}. Pass resume=<run dir> (containing "
            "checkpoints/last.ckpt) or resume=<path to a .ckpt file>"
        )
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    return ckpt, run_dir


def _run_id(run_dir: Path) -> str:
    """The W&B run id of this run directory, created on first use."""
    path = run_dir / "run_id.txt"
    if path.is_file():
        return path.read_text().strip()
    run_dir.mkdir(parents=True, exist_ok=True)
    run_id = uuid.uuid4().hex[:12]
    path.write_text(run_id + "\n")
    return run_id


def train(cfg: DictConfig) -> TrainResult:
    """Compose-level entry point (used by ``main`` and by tests)."""
    ckpt_path = None
    with open_dict(cfg):
        if cfg.get("resume"):
            ckpt_path, run_dir = resolve_resume(cfg.resume)
            cfg.run_dir = str(run_dir)
        run_dir = Path(cfg.run_dir)
        if cfg.get("run_id") is None:
            cfg.run_id = _run_id(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    L.seed_everything(cfg.seed, workers=True)
    datamodule = hydra.utils.instantiate(cfg.data.datamodule)
    module = hydra.utils.instantiate(cfg.module)
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values()]
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    has_checkpointing = any(isinstance(c, L.pytorch.callbacks.ModelCheckpoint) for c in callbacks)
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer,
        logger=loggers or False,
        callbacks=callbacks,
        plugins=[SafeCheckpointIO()],
        enable_checkpointing=has_checkpointing,
    )
    for logger in loggers:
        logger.log_hyperparams(
            {
                **OmegaConf.to_container(cfg, resolve=True),
                "gflops": module.model.gflops(),
                "params": sum(p.numel() for p in module.model.parameters()),
            }
        )
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)

    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(checkpoint, weights_only=False)
    ema_weights = run_dir / "checkpoints" / "ema.pt"
    if trainer.is_global_zero:
        # The EMA weights as a plain state dict with the official key names.
        atomic_save(module.ema.module.state_dict(), ema_weights)
    grids = [c.last_path for c in callbacks if getattr(c, "last_path", None) is not None]
    result = TrainResult(run_dir, checkpoint, ema_weights, grids[-1] if grids else None, module)
    if trainer.is_global_zero:
        print(f"run directory : {run_dir}")
        print(f"sample grid   : {result.samples}")
        print(f"checkpoint    : {checkpoint}")
        print(f"EMA weights   : {ema_weights}")
    return result


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
