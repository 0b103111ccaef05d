"""Gather a sweep into the thesis' scaling figures (Figs. 2.8, 2.10, 2.11) and its recipe
comparison (issue 30).

    python -m diffusion_transformer.report sweep=<multirun dir of diffusion_transformer.train>

Writes the table (``fid_vs_gflops.csv``), the figures and ``correlations.json`` to
``<sweep>/report`` (or ``out=``; ``diffusion_transformer.scaling``), and the metric against step,
training CPU time and sampling NFE per recipe and sampler with ``recipes.csv``/``samplers.csv``
(``diffusion_transformer.recipes``; ``baseline=`` names the recipe the others must reach), and
logs them as one W&B run of the sweep's group: offline by default (no account needed),
``logger.wandb.offline=false`` to log live, ``logger=none`` (or ``csv``: the tables are CSV files
anyway) for no W&B run. ``sweep=`` may be a folder of several sweeps (seeds run side by side).
"""

from __future__ import annotations

from omegaconf import DictConfig

from common.cli import hydra_main


def refuse_ignored_keys(cfg: DictConfig) -> None:
    """Refuse keys the report would ignore (issue 28), set away from the defaults of the chosen
    groups (``common.cli.default_config``): ``run_name``/``run_id``/``run_dir``, which only the
    logger group reads (the report names its W&B run report-<group> and writes into ``out=``),
    ``project``/``group`` without a W&B run, and ``logger.<name>.*`` but ``wandb.offline``."""
    from common.cli import default_config
    from common.errors import refuse_unused

    own = ("the report names its own W&B run (report-<group>) and writes into out=", "set out=")
    unused = dict.fromkeys(("run_name", "run_id", "run_dir"), own)
    name = next(iter(cfg.logger), "none")
    if name != "wandb":
        no_run = (f"logger={name} logs no W&B run", "log one with logger=wandb")
        unused |= dict.fromkeys(("project", "group"), no_run)
    read = ("the report reads only logger.wandb.offline of the logger group", "set project=/group=")
    for key in cfg.logger.get(name) or {}:
        if key != "offline":
            unused[f"logger.{name}.{key}"] = read
    refuse_unused(cfg, default_config(), unused)


@hydra_main("report")
def main(cfg: DictConfig) -> None:
    from diffusion_transformer.scaling import report

    refuse_ignored_keys(cfg)
    wandb = cfg.logger.get("wandb")
    mode = None if wandb is None else ("offline" if wandb.offline else "online")
    report(cfg.sweep, cfg.out, cfg.metric, mode, cfg.project, cfg.group, cfg.baseline)


if __name__ == "__main__":
    # Through the imported module, so that messages name diffusion_transformer.report.
    from diffusion_transformer.report import main as _main

    _main()
