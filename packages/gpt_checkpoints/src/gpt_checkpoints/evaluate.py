"""Evaluate a trained G.pt: ``python -m gpt_checkpoints.evaluate ckpt=<run dir>``.

Writes ``results.json`` and PNG plots to the output folder (and to the loggers of ``logger=``:
``wandb`` (offline unless ``logger.wandb.offline=false``), ``csv`` or ``none``): one G.pt step vs
one tuned step of hand-designed optimizers (Fig. 3.3; keys ``one_step_gpt``,
``one_step_best_sgd``, ``one_step_best_adam``, ...), SGD/Adam optimisation curves vs one G.pt step
(Fig. 3.4), prompt alignment R^2 (Sec. 3.4.4; ``prompt_alignment_r2``), recursive prompting from
out-of-distribution initialisations (Fig. 3.6) and the nearest-neighbour memorisation score
(Sec. 3.5, Fig. 3.9) and the memorisation baselines of Zeng et al. 2025 with their
performance-vs-novelty figure (``novelty``, ``memorization.novelty_baselines``); the last two
need ``dataset=`` for the training and test runs. G.pt samples on ``device=``.
"""

from __future__ import annotations

from omegaconf import DictConfig

from common.cli import hydra_main

ANALYSES = ("one_step", "curves", "alignment", "recursive", "memorization", "novelty")
DATA_ANALYSES = {"memorization", "novelty"}  # need the training and held-out runs (dataset=)

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


@hydra_main("evaluate", checks=CHECKS)
def main(cfg: DictConfig) -> None:
    import json
    from pathlib import Path

    import torch

    from common.devices import pick_device
    from gpt_checkpoints.analysis import evaluation as ev
    from gpt_checkpoints.analysis import memorization
    from gpt_checkpoints.analysis import plots as plots_
    from gpt_checkpoints.analysis.evaluation import best_prompt, resolve_better
    from gpt_checkpoints.dataset.datamodule import CheckpointDataModule
    from gpt_checkpoints.model.module import load_gpt, load_task

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
    device = pick_device(cfg.device)
    module = load_gpt(cfg.ckpt, preset=cfg.preset).to(device)
    task = load_task(module, cfg.data.root)
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
        plots_.plot_one_step(res, plots.setdefault("one_step", out / "one_step.png"))
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
            plots_.plot_curves(
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
            prompt_range=cfg.alignment_range,
        )
        results["prompt_alignment_r2"] = res["prompt_alignment_r2"]
        results["prompt_alignment"] = res
        plots_.plot_alignment(res, metric, plots.setdefault("alignment", out / "alignment.png"))
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
        plots_.plot_recursive(res, metric, plots.setdefault("recursive", out / "recursive.png"))
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
        plots_.plot_novelty(res, plots.setdefault("novelty", out / "novelty.png"))
        plots_.print_novelty(res)
    path = out / "results.json"
    path.write_text(json.dumps(results, indent=2))
    _log(cfg, results, plots)
    print(f"results : {path} (G.pt on {device})")
    for key in ("one_step_gpt", "one_step_best_sgd", "one_step_best_adam", "prompt_alignment_r2"):
        if key in results:
            print(f"{key:<20}: {results[key]:.4f}")
    print(f"plots   : {', '.join(str(p) for p in plots.values())}")


def _log(cfg: DictConfig, results: dict, plots: dict) -> None:
    """The scalar results (and, to W&B, the plots) to each logger of ``logger=``."""
    from hydra.utils import instantiate

    scalars = {k: v for k, v in results.items() if isinstance(v, (int, float))}
    for name, node in (cfg.logger or {}).items():
        logger = instantiate(node, **({"job_type": "evaluate"} if name == "wandb" else {}))
        logger.log_metrics(scalars)
        if name == "wandb":
            for key, path in plots.items():
                logger.log_image(f"plots/{key}", [str(path)])
            logger.experiment.finish()
        else:
            logger.save()


if __name__ == "__main__":
    from gpt_checkpoints.evaluate import main as _main

    _main()
