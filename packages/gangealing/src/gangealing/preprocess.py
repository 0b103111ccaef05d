"""Automated GAN dataset pre-processing (thesis Sec. 4.4.3):
``python -m gangealing.preprocess ckpt=<run> data.root=<folder> out=<dir> keep=0.9 size=256``.

Ranks the images by warp quality, filters them as the official ``congeal_dataset.py`` does and
writes ``ranking.csv`` and ``aligned/``; the steps are documented in ``gangealing.apps.preprocess``.
"""

from __future__ import annotations

from omegaconf import DictConfig

from common.cli import hydra_main

# What makes sense for each number this command reads (common.errors.check_values).
CHECKS = {
    "keep": "(0,1]",
    "size": "int>=8",
    "load_size": "int>=8|null",
    "batch_size": "int>=1",
    "iters": "int>=1|null",
    "cluster": "int>=0|null",
    "max_out_of_bounds": "[0,1]|null",
    "min_effective_resolution": "int>=1|null",
}


@hydra_main("preprocess", checks=CHECKS)
def main(cfg: DictConfig) -> None:
    from common.devices import pick_device
    from gangealing.align.congealer import Congealer
    from gangealing.apps.preprocess import preprocess_folder

    device = pick_device(cfg.device)  # a bad device= is refused before any file is read
    paths = preprocess_folder(
        Congealer.load(cfg.ckpt, preset=cfg.preset),
        cfg.data.root,
        cfg.out,
        keep=cfg.keep,
        size=cfg.size,
        load_size=cfg.load_size,
        batch_size=cfg.batch_size,
        cluster=cfg.cluster,
        flips=cfg.flips,
        iters=cfg.iters,
        padding_mode=cfg.padding_mode,
        device=device,
        square=cfg.square,
        max_out_of_bounds=cfg.max_out_of_bounds,
        min_effective_resolution=cfg.min_effective_resolution,
    )
    print(f"ranking        : {paths['ranking']}")
    print(f"aligned images : {paths['aligned']} (train a GAN on this folder)")


if __name__ == "__main__":  # the module's own main, so the config knows its command's name
    from gangealing.preprocess import main as _main

    _main()
