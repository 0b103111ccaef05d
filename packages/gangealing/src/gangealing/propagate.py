"""Propagate one edit from congealed space to a folder of images (thesis Sec. 4.4.1, Fig. 4.4).

``python -m gangealing.propagate congealer=<run> images=<folder> edit=<file> size=256``

The edit is drawn on the average congealed image (``average.png`` of ``gangealing.congeal``), at
any resolution (it is resized to ``size`` x ``size``, nearest neighbour for labels):

- an RGBA PNG with transparency: an **overlay** composited onto every image -> ``edited/``;
- a single-channel or palette PNG of class indices 0..K-1: a **label map** -> ``labels/`` (8-bit
  palette PNGs holding the class index, 255 where no congealed pixel lands) and ``overlays/``
  (the colours blended over the image; class 0 counts as background and is not drawn);
- a ``.json`` file: **keypoints** in congealed pixels, either ``[[x, y], ...]`` at ``size`` or
  ``{"points": [[x, y], ...], "size": S}`` at resolution S -> ``keypoints/`` (points drawn on the
  images) and ``keypoints.json`` (every image's points, in-image visibility and flip).

Images are loaded center-cropped at ``image_size`` (default ``size``); the congealer runs at
``size`` and its grids, being normalised, map straight into the ``image_size`` images.
Videos: extract frames first, ``ffmpeg -i video.mp4 frames/%05d.png``, propagate with
``images=frames``, and reassemble ``ffmpeg -i <out>/edited/%05d.png edited.mp4`` (the thesis
applies T per frame, without temporal information).
"""

from __future__ import annotations

from omegaconf import DictConfig

from common.cli import hydra_main
from common.devices import pick_device
from gangealing.align.congealer import Congealer
from gangealing.apps.propagate import load_edit, propagate_folder

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


@hydra_main("propagate", input_paths=("congealer", "images", "edit"), checks=CHECKS)
def main(cfg: DictConfig) -> None:
    edit = load_edit(cfg.edit, cfg.edit_type, cfg.size, cfg.max_classes)
    paths = propagate_folder(
        Congealer.load(cfg.congealer, preset=cfg.get("preset")),
        cfg.images,
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
        device=pick_device(cfg.device),
    )
    print(f"propagated a {edit.kind} edit:")
    for key, path in paths.items():
        print(f"  {key:9s}: {path}")


if __name__ == "__main__":
    from gangealing.propagate import main as _main

    _main()
