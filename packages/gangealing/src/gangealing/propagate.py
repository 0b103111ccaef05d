"""Propagate one edit from congealed space to a folder of images (thesis Sec. 4.4.1):
``python -m gangealing.propagate ckpt=<run> data.root=<folder> edit=<file> size=256``.

The edit kinds (overlay, label map, keypoints) and the outputs are documented in
``gangealing.apps.propagate``.
"""

from __future__ import annotations

from omegaconf import DictConfig

from common.cli import hydra_main

# What makes sense for each number this command reads (common.errors.check_values).
CHECKS = {
    "size": "int>=8",
    "image_size": "int>=8|null",
    "max_classes": "int>=1",
    "label_alpha": "[0,1]",
    "point_radius": ">=0",
    "batch_size": "int>=1",
    "iters": "int>=1|null",
    "cluster": "int>=0|null",
}


@hydra_main("propagate", checks=CHECKS)
def main(cfg: DictConfig) -> None:
    from common.devices import pick_device
    from gangealing.align.congealer import Congealer
    from gangealing.apps.propagate import load_edit, propagate_folder

    device = pick_device(cfg.device)  # a bad device= is refused before any file is read
    edit = load_edit(cfg.edit, cfg.edit_type, cfg.size, cfg.max_classes)
    paths = propagate_folder(
        Congealer.load(cfg.ckpt, preset=cfg.preset),
        cfg.data.root,
        edit,
        cfg.out,
        size=cfg.size,
        image_size=cfg.image_size,
        batch_size=cfg.batch_size,
        cluster=cfg.cluster,
        flips=cfg.flips,
        iters=cfg.iters,
        label_alpha=cfg.label_alpha,
        point_radius=cfg.point_radius,
        device=device,
    )
    print(f"propagated a {edit.kind} edit:")
    for key, path in paths.items():
        print(f"  {key:9s}: {path}")


if __name__ == "__main__":  # the module's own main, so the config knows its command's name
    from gangealing.propagate import main as _main

    _main()
