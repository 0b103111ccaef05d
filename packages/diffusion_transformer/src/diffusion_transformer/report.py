"""Gather a sweep into the thesis' scaling figures (Figs. 2.8, 2.10, 2.11).

    python -m diffusion_transformer.report sweep=<multirun dir of diffusion_transformer.train>

Writes the table (``fid_vs_gflops.csv``), the figures and ``correlations.json`` to
``<sweep>/report`` (or ``out=``; ``diffusion_transformer.scaling``) and logs them as one W&B run
of the sweep's group: offline by default (no account needed), ``logger.wandb.offline=false`` to
log live, ``logger=none`` (or ``csv``: the table is a CSV file anyway) for no W&B run.
"""

from __future__ import annotations

from importlib.resources import files

from omegaconf import DictConfig, OmegaConf

from common.cli import hydra_main

# Keys of conf/report.yaml that only the shared logger group interpolates: report names its W&B
# run itself (report-<group>), so a value other than these defaults would be ignored.
_LOGGER_ONLY = {"run_name": "report", "run_id": None, "run_dir": "${hydra:runtime.output_dir}"}


def refuse_ignored_keys(cfg: DictConfig) -> None:
    """Refuse keys the report would ignore (issue 28): ``project``/``group`` without a W&B run,
    ``run_name``/``run_id``/``run_dir``, and ``logger.<name>.*`` other than ``wandb.offline``."""
    given = OmegaConf.to_container(cfg, resolve=False)
    for key, default in _LOGGER_ONLY.items():
        if given[key] != default:
            instead = ", or set out=<folder>" if key == "run_dir" else ""
            raise ValueError(
                f"{key}={given[key]} is ignored because the report names its own W&B run "
                f"(report-<group>) and writes into out=; drop it{instead}"
            )
    name = next(iter(given["logger"]), "none")
    if name != "wandb":
        for key in ("project", "group"):
            if given[key] is not None:
                raise ValueError(
                    f"{key}={given[key]} is ignored because logger={name} logs no W&B run; drop "
                    "it, or log one with logger=wandb"
                )
    group = OmegaConf.load(files("common.conf") / "logger" / f"{name}.yaml")
    default = OmegaConf.to_container(group, resolve=False).get(name, {})
    for key, value in given["logger"].get(name, {}).items():
        if key != "offline" and value != default.get(key):
            instead = f", or set {key}={value}" if key in ("project", "group") else ""
            raise ValueError(
                f"logger.{name}.{key}={value} is ignored because the report reads only "
                f"logger.wandb.offline of the logger group; drop it{instead}"
            )


@hydra_main("report")
def main(cfg: DictConfig) -> None:
    from diffusion_transformer.scaling import report

    refuse_ignored_keys(cfg)
    wandb = cfg.logger.get("wandb")
    mode = None if wandb is None else ("offline" if wandb.offline else "online")
    report(cfg.sweep, cfg.out, cfg.metric, mode, cfg.project, cfg.group)


if __name__ == "__main__":
    # Through the imported module, so that messages name diffusion_transformer.report.
    from diffusion_transformer.report import main as _main

    _main()
