"""Train a DiT: ``python -m diffusion_transformer.train [model=xl patch=2 experiment=...]``.

With no overrides it trains a small DiT on scikit-learn's digits on the CPU and prints where the
sample grid and the checkpoint are. ``resume=<run dir or .ckpt>`` continues a run: same step,
optimizer, EMA, data order, logs and W&B run. ``strategy=ddp|fsdp`` (``conf/strategy`` in
``common``) trains on several devices or nodes; ``tf32=false`` turns TF32 matmuls off on GPUs.
"""

from __future__ import annotations

import logging

import hydra
import lightning as L
import torch
from omegaconf import DictConfig

from common.checkpoint import atomic_save
from common.cli import hydra_main
from common.training import build_trainer
from common.training.runs import Export, Job, TrainResult, fit_and_export, run_job
from common.training.strategies import full_state_dict

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> TrainResult | None:
    """Compose-level entry point (used by ``main`` and by tests); ``None`` when a rerun multirun
    skips this job because it finished before (``common.training.runs``)."""
    return run_job(cfg, _fit)


def _fit(cfg: DictConfig, job: Job) -> TrainResult:
    run_dir = job.run_dir
    if torch.cuda.is_available():
        tf32 = bool(cfg.get("tf32", True))
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32

    L.seed_everything(cfg.seed, workers=True)
    datamodule = hydra.utils.instantiate(cfg.data.datamodule)
    module = hydra.utils.instantiate(cfg.module)
    trainer: L.Trainer = build_trainer(
        cfg,
        {
            "gflops": module.model.gflops(),
            "params": sum(p.numel() for p in module.model.parameters()),
        },
    )

    def export(trainer: L.Trainer) -> Export:
        """The EMA weights as a plain state dict with the official key names."""
        ema_weights = run_dir / "checkpoints" / "ema.pt"
        state = full_state_dict(trainer)  # every rank takes part: FSDP gathers the shards
        if trainer.is_global_zero:
            prefix = "ema.module."
            ema = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            atomic_save(ema, ema_weights)
        grids = [c.last_path for c in trainer.callbacks if getattr(c, "last_path", None)]
        usage = f"python -m diffusion_transformer.sample ckpt={ema_weights}"
        return Export(ema_weights, "EMA weights", usage, grids[-1] if grids else None)

    return fit_and_export(job, trainer, module, export, datamodule=datamodule)


# What makes sense for each number this command reads (common.errors.check_values).
CHECKS = {
    "seed": "int>=0",
    "patch": "int>=1",
    "model.depth": "int>=1|null",  # null: Table 2.1's value for model.size
    "model.hidden_size": "int>=1|null",
    "model.num_heads": "int>=1|null",
    "model.mlp_ratio": ">0",
    "data.datamodule.batch_size": "int>=1",
    "optim.lr": ">0",
    "optim.weight_decay": ">=0",
    "ema_decay": "[0,1]",
    "class_dropout_prob": "[0,1)",
    "checkpoint_every": "int>=0",
    "sample_every": "int>=0",
    "eval.every_n_steps": "int>=0",
    "eval.num_samples": "int>=1",
    "eval.batch_size": "int>=1",
    "eval.cfg_scale": ">=0",
    "eval.steps": "int>=1|null",
    "diffusion.sampling_steps": "int>=1|null",
}


@hydra_main(
    "train",
    input_paths=(
        "resume",
        "data.root",
        "data.vae.path",
        "eval.reference",
        "metrics.inception_weights",
        "metrics.cache_dir",
    ),
    checks=CHECKS,
    # The spellings of the other packages' training commands (batch_size=, num_workers=).
    aliases={
        "batch_size": "data.datamodule.batch_size",
        "num_workers": "data.datamodule.num_workers",
    },
)
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    # Call ``main`` through the imported module, not this ``__main__`` copy: submitit pickles the
    # task function by reference only when it lives in an importable module (by value it drags in
    # ``torch.backends.cudnn``, which cannot be pickled), so ``python -m ... -m`` sweeps launch.
    from diffusion_transformer.train import main as _main

    _main()
