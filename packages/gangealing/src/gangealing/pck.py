"""PCK-Transfer evaluation (thesis Sec. 4.4.2):
``python -m gangealing.pck ckpt=<run> benchmark=spair|cub|synthetic data.root=<...>``.

Methods ``gangealing`` (a congealer: ours or a released one), ``congealing`` (classic pixel
congealing) and ``none``; writes ``<out>/pck.json``. The protocols and transfers are documented
in ``gangealing.eval.benchmark``.
"""

from __future__ import annotations

import math
from pathlib import Path

from omegaconf import DictConfig

from common.cli import hydra_main

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


@hydra_main("pck", checks=CHECKS)
def main(cfg: DictConfig) -> None:
    from gangealing.eval.benchmark import run

    record = run(cfg)
    for alpha in cfg.alphas:
        value = record[f"pck@{alpha:g}"]
        shown = "n/a" if value is None or math.isnan(value) else f"{value:.2f}%"
        print(f"PCK-Transfer@{alpha:g} ({record['method']}, {record['benchmark']}): {shown}")
    print(f"pairs: {record['num_pairs']}, keypoints: {record['num_visible']}")
    print(f"results: {Path(cfg.out) / 'pck.json'}")


if __name__ == "__main__":  # the module's own main, so the config knows its command's name
    from gangealing.pck import main as _main

    _main()
