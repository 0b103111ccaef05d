"""Automated GAN dataset pre-processing (thesis Sec. 4.4.3, Fig. 4.6).

``python -m gangealing.preprocess congealer=<run> images=<folder> out=<dir> keep=0.9 size=256``

1. Score every image by how smoothly the congealer warps it
   (:func:`gangealing.apps.correspondence.flow_smoothness_scores` on the residual flow
   ``STNOutput.flow``, the official ``flow_scores``; lower is better): rough flows flag images the
   aligner cannot explain (occlusions, several objects, wrong category).
   A congealer with only a similarity stage has no flow; its images are ranked by the similarity
   scale instead, ``score = -log s`` with ``s`` the scale of the reverse similarity matrix: the
   smaller the object in the image, the more its aligned crop is upsampled and blurred.
2. Keep the best ``keep`` fraction (at least one image) and, among them, drop the ones the
   official ``congeal_dataset.py`` drops: aligned crops that sample more than
   ``max_out_of_bounds`` of their pixels beyond the photo (official threshold 0.025; with
   ``square=border_pad`` the photo is padded, not cropped, as official ``border_pad``, and the
   padding counts as beyond), and crops whose object covers fewer than
   ``min_effective_resolution`` pixels of the photo (official 192 at 256 px output; measured
   here as the crop's side in photo pixels, scale x square side, where the official code
   multiplies by the photo's short side).
3. Write the kept images *similarity-aligned* (the thesis aligns datasets with the similarity
   Spatial Transformer, so objects keep their shape), sampled once from the original pixels at
   ``size`` x ``size``. A flow-only congealer has no similarity stage: its full warp is written.

Outputs: ``ranking.csv`` (``file,score,out_of_bounds,effective_resolution,kept``, best first)
and ``aligned/<file>.png``.
"""

from __future__ import annotations

from omegaconf import DictConfig

from common.cli import hydra_main
from common.devices import pick_device
from gangealing.align.congealer import Congealer
from gangealing.apps.preprocess import preprocess_folder

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


@hydra_main("preprocess", input_paths=("congealer", "images"), checks=CHECKS)
def main(cfg: DictConfig) -> None:
    paths = preprocess_folder(
        Congealer.load(cfg.congealer, preset=cfg.get("preset")),
        cfg.images,
        cfg.out,
        keep=cfg.keep,
        size=cfg.size,
        load_size=cfg.load_size,
        batch_size=cfg.batch_size,
        cluster=cfg.cluster,
        flips=cfg.flips,
        iters=cfg.iters,
        padding_mode=cfg.padding_mode,
        device=pick_device(cfg.device),
        square=cfg.square,
        max_out_of_bounds=cfg.max_out_of_bounds,
        min_effective_resolution=cfg.min_effective_resolution,
    )
    print(f"ranking        : {paths['ranking']}")
    print(f"aligned images : {paths['aligned']} (train a GAN on this folder)")


if __name__ == "__main__":
    from gangealing.preprocess import main as _main

    _main()
