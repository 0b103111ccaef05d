"""GANgealing: ``python -m gangealing.train generator=<stylegan2.pt>`` (thesis Sec. 4.3).

Trains the Spatial Transformers and the target mode on GAN-supervised pairs from a frozen
StyleGAN2 (``training.module.GangealingModule``). ``resume=<run dir>`` continues a run; the
generator must be the same file (checked by fingerprint). At the end it writes
``checkpoints/last.ckpt`` and ``congealer.pt`` (EMA transformers, target modes and generator,
test-time settings), which ``congeal``, ``propagate``, ``preprocess`` and ``pck`` read with
``ckpt=``, and ``generated/`` (samples of the generator), on which the ``congeal`` command it
prints runs.
"""

from __future__ import annotations

from omegaconf import DictConfig

from common.cli import hydra_main

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
    "model.supersize": "int>=8|null",
}


#: The key of ``loss`` each perceptual loss reads (``training.losses.perceptual_loss``).
LOSS_KEYS = {"lpips": "backbone_path", "ssl_vgg": "checkpoint_path"}


@hydra_main("train", checks=CHECKS)
def main(cfg: DictConfig) -> None:
    from common.cli import refuse_ignored_training_keys
    from gangealing.training.jobs import train_gangealing

    unused = {  # issue 28: keys a combination ignores are refused
        f"loss.{key}": (f"loss.name={cfg.loss.name} does not read it", f"pass loss.name={name}")
        for name, key in LOSS_KEYS.items()
        if cfg.loss.name != name
    }
    refuse_ignored_training_keys(cfg, unused)
    train_gangealing(cfg)


if __name__ == "__main__":  # the module's own main, so the config knows its command's name
    from gangealing.train import main as _main

    _main()
