"""The jobs of ``python -m gpt_checkpoints.evaluate`` (``evaluate_gpt``) and ``python -m
gpt_checkpoints.prompt`` (``prompt_gpt``), from their composed configs (``conf/evaluate.yaml``,
``conf/prompt.yaml``)."""

from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from common.checkpoint import atomic_save, write_json
from common.devices import pick_device
from gpt_checkpoints.analysis import evaluation as ev
from gpt_checkpoints.analysis import memorization
from gpt_checkpoints.analysis import plots as plots_
from gpt_checkpoints.analysis.evaluation import (
    UNSEEN_SEED,
    best_prompt,
    load_params,
    prompt_recursively,
    resolve_better,
)
from gpt_checkpoints.dataset.datamodule import CheckpointDataModule
from gpt_checkpoints.model.module import load_gpt, load_task
from gpt_checkpoints.model.training import next_command

ANALYSES = ("one_step", "curves", "alignment", "recursive", "memorization", "novelty")
DATA_ANALYSES = {"memorization", "novelty"}  # need the training and held-out runs (dataset=)

PARAMS_FILE = "prompted_params.safetensors"
REPORT_FILE = "report.json"


def evaluate_gpt(cfg: DictConfig) -> None:
    """Evaluate the G.pt of ``cfg.ckpt`` (``gpt_checkpoints.evaluate``'s docstring): write
    ``results.json`` and the plots to ``cfg.out`` and the scalar results to the loggers of
    ``cfg.logger``."""
    analyses = set(ANALYSES if cfg.analyses is None else cfg.analyses)
    if unknown := sorted(analyses - set(ANALYSES)):
        raise ValueError(
            f"unknown analyses {unknown}; choose from [{','.join(ANALYSES)}] or analyses=null (all)"
        )
    data_keys = [k for k in ("dataset", "test_fraction", "split_seed") if cfg[k] is not None]
    if data_keys and not analyses & DATA_ANALYSES:
        raise ValueError(
            f"{', '.join(f'{k}=' for k in data_keys)} only serve the memorization and novelty "
            "analyses, which analyses=[...] leaves out; drop them or add those analyses"
        )
    if cfg.dataset and not Path(cfg.dataset).is_dir():
        raise FileNotFoundError(f"dataset={cfg.dataset} is not a checkpoint dataset folder")
    out = Path(cfg.out)
    device = pick_device(cfg.device)
    module = load_gpt(cfg.ckpt, preset=cfg.preset).to(device)
    # the dataset and split the G.pt was trained on (recorded by gpt_checkpoints.train), or dataset=
    recorded = module.hparams["task"]
    dataset = cfg.dataset or recorded.get("dataset")
    if dataset and not Path(dataset).is_dir():
        raise FileNotFoundError(
            f"{dataset}, the dataset {cfg.ckpt} was trained on, is gone; pass dataset=<its new "
            "folder> or leave memorization and novelty out of analyses=[...]"
        )
    split = {"test_fraction": 0.1, "seed": 0, "max_runs": None, **recorded.get("split", {})}
    for key, name in (("test_fraction", "test_fraction"), ("seed", "split_seed")):
        if cfg[name] is not None:
            split[key] = cfg[name]
    needs_data = sorted(analyses & DATA_ANALYSES)
    if needs_data and not dataset and cfg.analyses is None:
        print(f"skipping {', '.join(needs_data)}: they need dataset=<checkpoint dataset folder>")
        analyses -= DATA_ANALYSES
    elif needs_data and not dataset:
        what = " and ".join(needs_data) + (
            " analyses need" if len(needs_data) > 1 else " analysis needs"
        )
        raise ValueError(
            f"the {what} dataset=<checkpoint dataset folder>; or leave them out of analyses=[...]"
        )
    out.mkdir(parents=True, exist_ok=True)
    task = load_task(module, cfg.data.root)
    metric = module.hparams["metric"]
    sampler, steps, better = cfg.sampler, cfg.sampling_steps, resolve_better(module, cfg.better)
    results: dict = {
        "task": task.name,
        "metric": metric,
        "sampler": sampler or module.diffusion_cfg["sampler"],
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
            dataset,
            metric,
            test_fraction=split["test_fraction"],
            seed=split["seed"],
            max_runs=split["max_runs"],
        )
        if analyses & DATA_ANALYSES
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
    write_json(results, path)
    _log(cfg, results, plots)
    print(f"results : {path} (G.pt on {device})")
    for key in ("one_step_gpt", "one_step_best_sgd", "one_step_best_adam", "prompt_alignment_r2"):
        if key in results:
            print(f"{key:<20}: {results[key]:.4f}")
    print(f"plots   : {', '.join(str(p) for p in plots.values())}")


def _log(cfg: DictConfig, results: dict, plots: dict) -> None:
    """The scalar results (and, to W&B, the plots) to each logger of ``logger=``."""
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


def prompt_gpt(cfg: DictConfig) -> None:
    """Prompt the G.pt of ``cfg.ckpt`` (``gpt_checkpoints.prompt``'s docstring): write the
    updated parameters (``PARAMS_FILE``) and the report (``REPORT_FILE``) into ``cfg.out``."""
    if cfg.params and (
        ignored := [k for k in ("init", "init_seed", "num_nets") if cfg[k] is not None]
    ):
        raise ValueError(
            f"{', '.join(f'{k}=' for k in ignored)} only set up a fresh initialisation, which "
            "params= replaces; drop one or the other"
        )
    if cfg.prompt is not None and cfg.better != "auto":
        raise ValueError(
            f"better={cfg.better} picks the best prompt, which prompt={cfg.prompt} replaces; "
            "pass one of them"
        )
    device = pick_device(cfg.device)
    module = load_gpt(cfg.ckpt, preset=cfg.preset).to(device)
    task = load_task(module, cfg.data.root)
    metric = module.hparams["metric"]
    if cfg.params:
        theta = load_params(cfg.params, task)
    else:
        g = torch.Generator().manual_seed(UNSEEN_SEED + int(cfg.init_seed or 0))
        theta = task.init(int(cfg.num_nets or 1), g, cfg.init or "fan_in_uniform")
    better = resolve_better(module, cfg.better)
    prompt = float(cfg.prompt) if cfg.prompt is not None else best_prompt(module, better)
    theta, trace = prompt_recursively(
        module, task, theta, prompt, cfg.recursive, cfg.sampler, cfg.sampling_steps, cfg.seed
    )
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    params = {
        k: (v[0] if theta.shape[0] == 1 else v).contiguous()
        for k, v in task.layout.unflatten(theta).items()
    }
    atomic_save(params, out / PARAMS_FILE)
    report = {
        "metric": metric,
        "prompt": prompt,
        "start": trace[0],
        "achieved": trace[-1],
        "trace": trace,
        "params": str(out / PARAMS_FILE),
    }
    write_json(report, out / REPORT_FILE)
    print(f"task          : {task.name} ({task.layout.num_params} parameters)")
    steps = f"prompt {prompt:.4g}, {cfg.recursive} G.pt step(s) on {device}"
    print(f"{metric:<14}: {_fmt(trace[0])} -> {_fmt(trace[-1])} ({steps})")
    print(f"parameters    : {out / PARAMS_FILE}")
    print(f"report        : {out / REPORT_FILE}")
    extra = {"preset": cfg.preset, "data.root": cfg.data.root and Path(cfg.data.root).resolve()}
    line = next_command("evaluate", cfg.ckpt, module)
    print(f"next          : {line}" + "".join(f" {k}={v}" for k, v in extra.items() if v))


def _fmt(values) -> str:
    return ", ".join(f"{v:.4g}" for v in values)
