"""Train a DiT: ``python -m diffusion_transformer.train [model=xl patch=2 experiment=...]``.

With no overrides it trains a small DiT on scikit-learn's digits on the CPU and prints where the
sample grid and the checkpoint are. ``resume=<run dir or .ckpt>`` continues a run: same step,
optimizer, EMA, data order, logs and W&B run. ``strategy=ddp|fsdp`` (``conf/strategy`` in
``common``) trains on several devices or nodes; ``tf32=false`` turns TF32 matmuls off on GPUs.
"""

from __future__ import annotations

from omegaconf import DictConfig

from common.cli import hydra_main

# What makes sense for each number this command reads (common.errors.check_values).
CHECKS = {
    "seed": "int>=0",
    "patch": "int>=1",
    "model.depth": "int>=1|null",  # null: Table 2.1's value for model.size
    "model.hidden_size": "int>=1|null",
    "model.num_heads": "int>=1|null",
    "batch_size": "int>=1",
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
    checks=CHECKS,
)
def main(cfg: DictConfig) -> None:
    from diffusion_transformer.training import train

    train(cfg)


if __name__ == "__main__":
    # Call ``main`` through the imported module, not this ``__main__`` copy: submitit pickles the
    # task function by reference only when it lives in an importable module (by value it drags in
    # ``torch.backends.cudnn``, which cannot be pickled), so ``python -m ... -m`` sweeps launch.
    from diffusion_transformer.train import main as _main

    _main()
