"""Congeal a folder of real images: ``python -m gangealing.congeal ckpt=... data.root=...``.

Thesis Sec. 4.4.1: the trained Spatial Transformer aligns every image; the average of the
congealed images is the template on which a user draws edits (``gangealing.propagate``). Writes
``aligned/<name>.png``, ``average.png``, ``warps.pt`` and the target mode ``target.png``
(``gangealing.apps.congeal``).
"""

from __future__ import annotations

from omegaconf import DictConfig

from common.cli import hydra_main

# What makes sense for each number this command reads (common.errors.check_values).
CHECKS = {
    "size": "int>=8",
    "batch_size": "int>=1",
    "iters": "int>=1|null",
    "cluster": "int>=0|null",
}


@hydra_main("congeal", checks=CHECKS)
def main(cfg: DictConfig) -> None:
    from common.devices import pick_device
    from gangealing.align.congealer import Congealer
    from gangealing.apps.congeal import congeal_folder

    device = pick_device(cfg.device)  # a bad device= is refused before any file is read
    paths = congeal_folder(
        Congealer.load(cfg.ckpt, preset=cfg.preset),
        cfg.data.root,
        cfg.out,
        size=cfg.size,
        batch_size=cfg.batch_size,
        cluster=cfg.cluster,
        flips=cfg.flips,
        iters=cfg.iters,
        device=device,
    )
    print(f"aligned images : {paths['aligned']}")
    print(f"average image  : {paths['average']} (draw edits on it for gangealing.propagate)")
    if "target" in paths:
        print(f"target mode    : {paths['target']} (G(c), what the images are aligned to)")
    print(f"warps          : {paths['warps']}")


if __name__ == "__main__":  # the module's own main, so the config knows its command's name
    from gangealing.congeal import main as _main

    _main()
