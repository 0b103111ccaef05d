"""Evaluate a trained G.pt: ``python -m gpt_checkpoints.evaluate gpt=<run dir>``.

Writes ``results.json`` and PNG plots to the output folder (and to W&B, ``wandb=offline|online``):
one G.pt step vs one tuned step of hand-designed optimizers (Fig. 3.3; keys ``one_step_gpt``,
``one_step_best_sgd``, ``one_step_best_adam``, ...), SGD/Adam optimisation curves vs one G.pt step
(Fig. 3.4), prompt alignment R^2 (Sec. 3.4.4; ``prompt_alignment_r2``), recursive prompting from
out-of-distribution initialisations (Fig. 3.6) and the nearest-neighbour memorisation score
(Sec. 3.5, Fig. 3.9) and the memorisation baselines of Zeng et al. 2025 with their
performance-vs-novelty figure (``novelty``, ``memorization.novelty_baselines``); the last two
need ``dataset=`` for the training and test runs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from common.cli import hydra_main
from common.training.loggers import wandb_mode as resolve_wandb_mode
from gpt_checkpoints.analysis import evaluation as ev  # noqa: E402
from gpt_checkpoints.analysis import memorization  # noqa: E402
from gpt_checkpoints.analysis.evaluation import best_prompt  # noqa: E402
from gpt_checkpoints.dataset.datamodule import CheckpointDataModule  # noqa: E402
from gpt_checkpoints.model.module import load_gpt  # noqa: E402
from gpt_checkpoints.prompt import load_task, resolve_better  # noqa: E402

log = logging.getLogger(__name__)


def _plot_one_step(res: dict, path: Path) -> None:
    names = ["G.pt", *res["optimizers"]]
    values = [res["one_step_gpt"], *(v["value"] for v in res["optimizers"].values())]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(names, values, color=["tab:red"] + ["tab:gray"] * (len(names) - 1))
    ax.axhline(res["initial"], ls="--", c="k", lw=1, label="initial")
    ax.set_ylabel(res["metric"])
    ax.set_title("one step: G.pt vs tuned optimizers (Fig. 3.3)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_curves(res: dict, gpt_value: float, metric: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, curve in res["curves"].items():
        steps = [max(int(s), 1) for s in curve]
        ax.plot(steps, list(curve.values()), marker="o", ms=3, label=name)
    ax.axhline(gpt_value, c="tab:red", label="G.pt, one step")
    ax.set_xscale("log")
    ax.set_xlabel("optimizer steps")
    ax.set_ylabel(metric)
    ax.set_title("optimization curves (Fig. 3.4)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_alignment(res: dict, metric: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(4.5, 4))
    for prompts, achieved in zip(res["prompts"], res["achieved"], strict=True):
        ax.plot(prompts, achieved, c="tab:blue", alpha=0.4, lw=1)
    flat = [p for row in res["prompts"] for p in row]
    ax.plot([min(flat), max(flat)], [min(flat), max(flat)], "k--", lw=1, label="ideal")
    ax.set_xlabel(f"prompted {metric}")
    ax.set_ylabel(f"achieved {metric}")
    ax.set_title(f"prompt alignment R^2 = {res['prompt_alignment_r2']:.3f}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_recursive(res: dict, metric: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for scheme, trace in res.items():
        ax.plot(range(len(trace)), trace, marker="o", ms=3, label=scheme)
    ax.set_xlabel("G.pt steps (recursive prompting)")
    ax.set_ylabel(metric)
    ax.set_title("out-of-distribution initialisations (Fig. 3.6)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


ANALYSES = ("one_step", "curves", "alignment", "recursive", "memorization", "novelty")
DATA_ANALYSES = {"memorization", "novelty"}  # need the training and held-out runs (dataset=)

NOVELTY_STYLE = {  # method -> (label, colour, marker)
    "gpt": ("G.pt, one step", "tab:red", "o"),
    "nearest_prompted": ("nearest training ckpt with the prompted metric", "k", "s"),
    "interpolation": ("interpolation of two training ckpts (aligned)", "tab:purple", "D"),
    "independent_runs": ("independent SGD runs (held out)", "tab:green", "^"),
}


def _plot_novelty(res: dict, path: Path) -> None:
    """Zeng et al. 2025, Figs. 3-4: metric against novelty, per network, per method."""
    metric = res["metric"]
    methods = res["methods"]
    axes_keys = [k for k in ("similarity", "distance") if k in next(iter(methods.values()))]
    fig, axes = plt.subplots(1, len(axes_keys), figsize=(5.5 * len(axes_keys), 4), squeeze=False)
    noise = [m for m in methods if m.startswith("noise_")]
    greys = plt.cm.Blues(torch.linspace(0.4, 0.9, max(len(noise), 1)).tolist())
    for ax, key in zip(axes[0], axes_keys, strict=True):
        for name, row in methods.items():
            if name in NOVELTY_STYLE:
                label, colour, marker = NOVELTY_STYLE[name]
            else:
                label, colour, marker = (
                    f"training ckpt + noise {name[6:]}",
                    greys[noise.index(name)],
                    "x",
                )
            ax.scatter(
                row[key], row[metric], s=14, c=[colour], marker=marker, alpha=0.7, label=label
            )
        ax.set_xlabel(
            "max IoU of mispredictions with a training ckpt (1 = same errors)"
            if key == "similarity"
            else "distance to nearest training ckpt (aligned, normalised space)"
        )
        ax.set_ylabel(metric)
    axes[0][0].set_title(f"performance vs novelty, prompt {res['prompt']:.3g}")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _print_novelty(res: dict) -> None:
    metric = res["metric"]
    keys = [metric] + [k for k in ("similarity", "distance") if k in res["methods"]["gpt"]]
    print(
        f"{'novelty (mean of ' + str(res['num_nets']) + ')':<26}"
        + "".join(f"{k:>12}" for k in keys)
    )
    for name, row in res["methods"].items():
        print(f"  {name:<24}" + "".join(f"{row['mean'][k]:>12.4f}" for k in keys))


def run(cfg: DictConfig) -> dict:
    resolve_wandb_mode(cfg.wandb)  # a bad mode is refused before any work
    analyses = set(ANALYSES if cfg.analyses is None else cfg.analyses)
    if unknown := sorted(analyses - set(ANALYSES)):
        raise ValueError(
            f"unknown analyses {unknown}; choose from [{','.join(ANALYSES)}] or analyses=null (all)"
        )
    needs_data = sorted(analyses & DATA_ANALYSES)
    if needs_data and not cfg.get("dataset") and cfg.analyses is None:
        print(f"skipping {', '.join(needs_data)}: they need dataset=<checkpoint dataset folder>")
        analyses -= DATA_ANALYSES
    elif needs_data and not cfg.get("dataset"):
        what = " and ".join(needs_data) + (
            " analyses need" if len(needs_data) > 1 else " analysis needs"
        )
        raise ValueError(
            f"the {what} dataset=<checkpoint dataset folder>; or leave them out of analyses=[...]"
        )
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    module = load_gpt(cfg.gpt, preset=cfg.get("preset"))
    if torch.cuda.is_available():
        module.cuda()
    task = load_task(module, cfg.get("data_root"))
    metric = module.hparams["metric"]
    sampler, steps, better = cfg.sampler, cfg.sampling_steps, resolve_better(module, cfg.better)
    results: dict = {
        "task": task.name,
        "metric": metric,
        "sampler": sampler or "ddpm",
        "steps": steps,
    }
    plots = {}
    if "one_step" in analyses:
        res = ev.one_step_comparison(module, task, better, cfg.num_nets, cfg.prompt, sampler, steps)
        results.update({k: v for k, v in res.items() if k.startswith("one_step") or k == "initial"})
        results["optimizers"] = res["optimizers"]
        _plot_one_step(res, plots.setdefault("one_step", out / "one_step.png"))
        if "curves" in analyses:
            curves = ev.optimization_curves(
                module,
                task,
                res["optimizers"],
                better,
                cfg.num_nets,
                cfg.curve_steps,
                res["one_step_gpt"],
            )
            results["optimization_curves"] = curves
            _plot_curves(
                curves, res["one_step_gpt"], metric, plots.setdefault("curves", out / "curves.png")
            )
    if "alignment" in analyses:
        res = ev.prompt_alignment(
            module,
            task,
            cfg.alignment_nets,
            cfg.alignment_prompts,
            sampler,
            steps,
            prompt_range=cfg.get("alignment_range", "auto"),
        )
        results["prompt_alignment_r2"] = res["prompt_alignment_r2"]
        results["prompt_alignment"] = res
        _plot_alignment(res, metric, plots.setdefault("alignment", out / "alignment.png"))
    if "recursive" in analyses:
        res = ev.recursive_prompting(
            module,
            task,
            better=better,
            num_nets=cfg.num_nets,
            num_steps=cfg.recursive_steps,
            prompt=cfg.prompt,
            sampler=sampler,
            steps=steps,
        )
        results["recursive_prompting"] = res
        _plot_recursive(res, metric, plots.setdefault("recursive", out / "recursive.png"))
    dm = (
        CheckpointDataModule(
            cfg.dataset, metric, test_fraction=cfg.test_fraction, seed=cfg.split_seed
        )
        if needs_data
        else None
    )
    if "memorization" in analyses:
        low, high = module.metric_normalizer.low, module.metric_normalizer.high
        prompts = torch.linspace(low, high, cfg.memorization_prompts).tolist()
        results["nearest_neighbour_score"] = ev.nearest_neighbour_score(
            module,
            task,
            dm.train_runs,
            dm.test_runs,
            prompts,
            cfg.memorization_runs,
            sampler,
            steps,
        )
    if "novelty" in analyses:
        prompt = best_prompt(module, better) if cfg.prompt is None else cfg.prompt
        res = memorization.novelty_baselines(
            module,
            task,
            dm.train_runs,
            dm.test_runs,
            prompt,
            cfg.novelty_nets,
            cfg.noise_levels,
            sampler,
            steps,
        )
        results["novelty"] = res
        _plot_novelty(res, plots.setdefault("novelty", out / "novelty.png"))
        _print_novelty(res)
    path = out / "results.json"
    path.write_text(json.dumps(results, indent=2))
    if resolve_wandb_mode(cfg.wandb) != "disabled":
        _log_wandb(cfg, results, plots)
    print(f"results : {path}")
    for key in ("one_step_gpt", "one_step_best_sgd", "one_step_best_adam", "prompt_alignment_r2"):
        if key in results:
            print(f"{key:<20}: {results[key]:.4f}")
    print(f"plots   : {', '.join(str(p) for p in plots.values())}")
    return results


def _log_wandb(cfg: DictConfig, results: dict, plots: dict) -> None:
    import wandb

    run = wandb.init(
        project=cfg.project,
        dir=str(cfg.out),
        job_type="evaluate",
        mode=resolve_wandb_mode(cfg.wandb),
    )
    run.log({k: v for k, v in results.items() if isinstance(v, (int, float))})
    run.log({f"plots/{k}": wandb.Image(str(p)) for k, p in plots.items()})
    run.finish()


# What makes sense for each number this command reads (common.errors.check_values).
CHECKS = {
    "test_fraction": "(0,1)",
    "prompt": ">=0|null",
    "num_nets": "int>=1",
    "curve_steps": "int>=1",
    "alignment_nets": "int>=1",
    "alignment_prompts": "int>=2",
    "recursive_steps": "int>=1",
    "memorization_runs": "int>=1",
    "memorization_prompts": "int>=1",
    "novelty_nets": "int>=2",
    "noise_levels": ">0",
    "sampling_steps": "int>=1|null",
}


def _former_wandb(value: str) -> list[str] | None:
    """``wandb=true|false`` of the last release (with ``wandb_mode=``): today's ``wandb=<mode>``."""
    return {"true": ["wandb=offline"], "false": ["wandb=disabled"]}.get(value.lower())


# Former spellings, kept one release with a deprecation line (DiT report's wandb=<mode>).
LEGACY = {"steps": "sampling_steps", "wandb": _former_wandb, "wandb_mode": "wandb"}


@hydra_main(
    "evaluate",
    input_paths=("gpt", "dataset", "data_root"),
    checks=CHECKS,
    legacy_flags=LEGACY,
)
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    from gpt_checkpoints.evaluate import main as _main

    _main()
