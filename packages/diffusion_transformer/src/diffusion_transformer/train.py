"""Train a DiT: ``python -m diffusion_transformer.train [model=xl patch=2 experiment=...]``.

With no overrides it trains a small DiT on scikit-learn's digits on the CPU and prints where the
sample grid and the checkpoint are. ``resume=<run dir or .ckpt>`` continues a run: same step,
optimizer, EMA, data order, logs and W&B run. ``strategy=ddp|fsdp`` (``conf/strategy`` in
``common``) trains on several devices or nodes; ``tf32=false`` turns TF32 matmuls off on GPUs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from common.checkpoint import atomic_save
from common.strategies import full_state_dict
from common.training import SafeCheckpointIO, resolve_resume

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path
    ema_weights: Path
    samples: Path | None
    module: L.LightningModule


def _run_id(run_dir: Path, timeout_s: float = 60.0) -> str:
    """The W&B run id of this run directory (``run_id.txt``), created on first use.

    Every process of a run calls this and must get the same id. Lightning's DDP and FSDP launchers
    start the other ranks from rank 0 after it has created the file, but processes started
    together (SLURM, torchrun, several nodes on a shared file system) may race: the id is written
    to a temporary file and published with ``os.link``, which fails when the file exists, so the
    first process wins and every process reads the winner's id (``logger/wandb.yaml`` passes it
    as ``id`` with ``resume: allow``, so a resumed run continues the same W&B run).
    """
    path = run_dir / "run_id.txt"
    if not path.is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        new_id = uuid.uuid4().hex[:12] + "\n"
        fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=".run_id.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(new_id)
            os.link(tmp, path)
        except FileExistsError:
            pass
        except OSError:  # no hard links on this file system: exclusive create, then write
            with contextlib.suppress(FileExistsError), open(path, "x") as f:
                f.write(new_id)
        finally:
            os.unlink(tmp)
    deadline = time.monotonic() + timeout_s
    while not (run_id := path.read_text().strip()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} is empty: delete it to start a new W&B run")
        time.sleep(0.1)
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
        tf32 = bool(cfg.get("tf32", True))
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32

    L.seed_everything(cfg.seed, workers=True)
    datamodule = hydra.utils.instantiate(cfg.data.datamodule)
    module = hydra.utils.instantiate(cfg.module)
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values()]
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    has_checkpointing = any(isinstance(c, L.pytorch.callbacks.ModelCheckpoint) for c in callbacks)
    strategy = hydra.utils.instantiate(cfg.strategy) if cfg.get("strategy") else "auto"
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer,
        strategy=strategy,
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
    state = full_state_dict(trainer)  # every rank takes part: FSDP gathers the shards
    if trainer.is_global_zero:
        # The EMA weights as a plain state dict with the official key names.
        prefix = "ema.module."
        ema = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        atomic_save(ema, ema_weights)
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
    # Call ``main`` through the imported module, not this ``__main__`` copy: submitit pickles the
    # task function by reference only when it lives in an importable module (by value it drags in
    # ``torch.backends.cudnn``, which cannot be pickled), so ``python -m ... -m`` sweeps launch.
    from diffusion_transformer.train import main as _main

    _main()
