"""Train a StyleGAN2 for GANgealing: ``python -m gangealing.train_gan data=folder data.root=<dir>``.

GANgealing (thesis Ch. 4) aligns a category with a StyleGAN2 generator G trained on it (256x256
center crops in Sec. 4.4.2). With no overrides this trains a tiny 32x32 StyleGAN2 on the offline
``data=photo`` set (warps of a bundled photograph) on the CPU.
``model=stylegan2/paper resolution=256 trainer=gpu`` is the published configuration;
``augment=[color,translation,cutout]`` adds DiffAugment for small datasets.
``resume=<run dir>`` continues a run (same step, optimizers, EMA, path-length mean, data order).
At the end it writes ``checkpoints/last.ckpt`` and ``stylegan2.pt`` (rosinality format), which
the GANgealing stage loads with ``generator=<run dir>/stylegan2.pt``.
"""

from __future__ import annotations

from omegaconf import DictConfig

from common.cli import hydra_main

# What makes sense for each number this command reads (common.errors.check_values).
CHECKS = {
    "seed": "int>=0",
    "resolution": "int>=4",
    "batch_size": "int>=1",
    "data.num_images": "int>=1|null",
    "data.num_workers": "int>=0",
    "mixing": "[0,1]",
    "ema_decay": "[0,1]|null",
    "optim.lr": ">0",
    "regularization.r1_gamma": ">=0",
    "regularization.d_reg_every": "int>=0",
    "regularization.g_reg_every": "int>=0",
    "regularization.path_weight": ">=0",
    "num_samples": "int>=1",
    "sample_every": "int>=0",
    "export_every": "int>=0",
    "checkpoint_every": "int>=0",
}


#: The regularisation keys each lazy interval switches off when 0 (``training.gan_module``).
LAZY = {
    "d_reg_every": ("r1_gamma",),
    "g_reg_every": ("path_weight", "path_batch_shrink", "path_decay"),
}


@hydra_main("train_gan", checks=CHECKS)
def main(cfg: DictConfig) -> None:
    from common.cli import refuse_ignored_training_keys
    from gangealing.training.jobs import train_stylegan2

    unused = {  # issue 28: keys a combination ignores are refused
        f"regularization.{key}": (
            f"regularization.{every}=0 turns it off",
            f"pass regularization.{every}=<N >= 1>",
        )
        for every, keys in LAZY.items()
        if cfg.regularization[every] == 0
        for key in keys
    }
    refuse_ignored_training_keys(cfg, unused)
    train_stylegan2(cfg)


if __name__ == "__main__":  # the module's own main, so the config knows its command's name
    from gangealing.train_gan import main as _main

    _main()
