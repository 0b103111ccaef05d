"""Pre-train G.pt: ``python -m gpt_checkpoints.train task=mlp_digits metric=test_loss``.

Reads a checkpoint dataset built by ``gpt_checkpoints.collect`` (``dataset=`` defaults to
``checkpoints/<task>``), fits the parameter normalisation and metric range on its training split,
trains with AdamW and an EMA, and writes ``checkpoints/last.ckpt`` (resumable with
``resume=<run dir>``) and ``gpt.safetensors`` (EMA weights + everything needed to prompt).
"""

from __future__ import annotations

from omegaconf import DictConfig

from common.cli import hydra_main

# What makes sense for each number this command reads (common.errors.check_values).
CHECKS = {
    "seed": "int>=0",
    "batch_size": "int>=1",
    # |absent: a released preset's model node (model=mnist_loss) has no sizes.
    "model.depth": "int>=1|absent",
    "model.hidden_size": "int>=1|absent",
    "model.num_heads": "int>=1|absent",
    "model.max_token_size": "int>=1|null",
    "test_fraction": "(0,1)",
    "initial_fraction": "[0,1]",
    "max_runs": "int>=1|null",
    "optim.lr": ">0",
    "optim.warmup_steps": "int>=0",
    "optim.weight_decay": ">=0",
    "ema_decay": "[0,1]",
    "checkpoint_every": "int>=0",
    "diffusion.diffusion_steps": "int>=1",
    "diffusion.sampling_steps": "int>=1|null",
}


def refuse_ignored_keys(cfg: DictConfig) -> None:
    """Refuse keys this combination ignores (issue 28): ``task.recipe.*`` (the dataset records
    the recipe it was collected with), ``normalization`` of a released network (its preset's
    ``openai_coeff``), and those of every training command
    (``common.cli.refuse_ignored_training_keys``)."""
    from common.cli import refuse_ignored_training_keys

    why = f"train reads the recipe recorded in dataset={cfg.dataset}"
    collect = f"collect with it: python -m gpt_checkpoints.collect task={cfg.task.name}"
    unused = {
        f"task.recipe.{key}": (why, f"{collect} task.recipe.{key}={value}")
        for key, value in (cfg.task.get("recipe") or {}).items()
    }
    if cfg.model.get("preset"):
        why = f"model={cfg.model.preset} scales parameters by its preset's openai_coeff"
        unused["normalization"] = (why, "train a network of this package (model=small)")
    refuse_ignored_training_keys(cfg, unused)


@hydra_main("train", checks=CHECKS)
def main(cfg: DictConfig) -> None:
    from gpt_checkpoints.model.training import train

    refuse_ignored_keys(cfg)
    train(cfg)


if __name__ == "__main__":
    from gpt_checkpoints.train import main as _main

    _main()
