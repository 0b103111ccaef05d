"""Gather a sweep into the thesis' scaling figures (Figs. 2.8, 2.10, 2.11).

    python -m diffusion_transformer.report sweep=<multirun dir of diffusion_transformer.train>

Writes the table (``fid_vs_gflops.csv``), the figures and ``correlations.json`` to
``<sweep>/report`` (or ``out=``; ``diffusion_transformer.scaling``) and logs them as one W&B run
of the sweep's group: offline by default (no account needed), ``logger.wandb.offline=false`` to
log live, ``logger=none`` (or ``csv``: the table is a CSV file anyway) for no W&B run.
"""

from __future__ import annotations

from omegaconf import DictConfig

from common.cli import hydra_main


@hydra_main("report")
def main(cfg: DictConfig) -> None:
    from diffusion_transformer.scaling import report

    wandb = cfg.logger.get("wandb")
    mode = None if wandb is None else ("offline" if wandb.offline else "online")
    report(cfg.sweep, cfg.out, cfg.metric, mode, cfg.project, cfg.group)


if __name__ == "__main__":
    # Through the imported module, so that messages name diffusion_transformer.report.
    from diffusion_transformer.report import main as _main

    _main()
