"""PCK-Transfer evaluation: ``python -m gangealing.pck congealer=... dataset=...``.

Thesis Sec. 4.4.2 ("Quantitative Results"): keypoints of a source image x_A are transferred to a
target image x_B through congealed space, *forward* with A's warp and *reverse* with B's warp
(:func:`gangealing.align.stn.image_to_image_points`), and PCK-Transfer@alpha counts the transfers
that land within ``alpha * threshold`` of B's ground truth (``alpha_bbox`` for SPair-71k, ``max(H,
W)`` for CUB and the synthetic benchmark). When the Spatial Transformer flips exactly one image of a
pair, keypoints with a left/right distinction are swapped by the dataset's permutation (the last
sentence of Sec. 4.4.2).

Methods: ``gangealing`` (a trained ``congealer.pt``), ``congealing`` (classic least-squares pixel
congealing of the evaluation images themselves, Sec. 4.2) and ``none`` (identity transfer).
Writes ``<out>/pck.json`` with ``pck@<alpha>`` (percent), counts, method, dataset and config.
The evaluation itself is ``gangealing.eval.benchmark``; ``gangealing.evaluate_pck`` is the old
name of this command.
"""

from __future__ import annotations

import math
from pathlib import Path

from omegaconf import DictConfig

from common.cli import hydra_main
from gangealing.eval.benchmark import run

# What makes sense for each number this command reads (common.errors.check_values).
CHECKS = {
    "size": "int>=8|null",
    "iters": "int>=1|null",
    "num_pairs": "int>=1",
    "max_pairs": "int>=1|null",
    "seed": "int>=0",
    "batch_size": "int>=1",
    "cluster": "int>=0|null",
}


@hydra_main("pck", input_paths=("congealer", "root"), checks=CHECKS)
def main(cfg: DictConfig) -> None:
    record = run(cfg)
    for alpha in cfg.alphas:
        value = record[f"pck@{alpha:g}"]
        shown = "n/a" if value is None or math.isnan(value) else f"{value:.2f}%"
        print(f"PCK-Transfer@{alpha:g} ({record['method']}, {record['dataset']}): {shown}")
    print(f"pairs: {record['num_pairs']}, keypoints: {record['num_visible']}")
    print(f"results: {Path(cfg.out) / 'pck.json'}")


if __name__ == "__main__":
    from gangealing.pck import main as _main

    _main()
