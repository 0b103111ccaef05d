"""Congeal a folder of real images: ``python -m gangealing.congeal congealer=... images=...``.

Thesis Sec. 4.4.1: the trained Spatial Transformer aligns every image; the average of the
congealed images is the template on which a user draws edits (``gangealing.propagate``). Writes
``aligned/<name>.png``, ``average.png`` and ``warps.pt`` (per image: the reverse grid into the
image and whether it was flipped).
"""

from __future__ import annotations

from omegaconf import DictConfig

from common.cli import hydra_main
from common.devices import pick_device
from gangealing.align.congealer import Congealer
from gangealing.apps.congeal import congeal_folder

# What makes sense for each number this command reads (common.errors.check_values).
CHECKS = {
    "size": "int>=8",
    "batch_size": "int>=1",
    "iters": "int>=1|null",
    "cluster": "int>=0|null",
}


@hydra_main("congeal", input_paths=("congealer", "images"), checks=CHECKS)
def main(cfg: DictConfig) -> None:
    congealer = Congealer.load(cfg.congealer, preset=cfg.get("preset"))
    paths = congeal_folder(
        congealer,
        cfg.images,
        cfg.out,
        size=cfg.size,
        batch_size=cfg.batch_size,
        cluster=cfg.cluster,
        flips=cfg.flips,
        iters=cfg.iters,
        device=pick_device(cfg.device),
    )
    print(f"aligned images : {paths['aligned']}")
    print(f"average image  : {paths['average']} (draw edits on it for gangealing.propagate)")
    print(f"warps          : {paths['warps']}")


if __name__ == "__main__":
    from gangealing.congeal import main as _main

    _main()
