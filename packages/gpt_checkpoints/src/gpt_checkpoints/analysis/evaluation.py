"""Prompting and the analyses of a trained G.pt (thesis Sec. 3.4 and 3.5), used by the jobs of
``gpt_checkpoints.prompt`` and ``gpt_checkpoints.evaluate`` (``analysis.jobs``).

Every analysis feeds G.pt *unseen* networks: fresh initialisations from seeds outside the dataset
(``UNSEEN_SEED``) or the initial checkpoints of held-out test runs.
"""

from __future__ import annotations

from pathlib import Path

import torch

from common.checkpoint import safe_load
from gpt_checkpoints.analysis.optimizers import best_one_step, optimization_curve
from gpt_checkpoints.dataset.store import RunData
from gpt_checkpoints.model.module import GptModule
from gpt_checkpoints.tasks.base import Task

UNSEEN_SEED = 10**9  # datasets use seeds 0 .. runs-1; evaluation networks start here


def unseen_inits(task: Task, n: int, scheme: str = "fan_in_uniform", seed: int = 0) -> torch.Tensor:
    return task.init(n, torch.Generator().manual_seed(UNSEEN_SEED + seed), scheme)


def gpt_step(
    module: GptModule,
    task: Task,
    theta: torch.Tensor,
    prompt: torch.Tensor | float,
    sampler: str | None = None,
    steps: int | None = None,
    seed: int = 0,
    current: torch.Tensor | None = None,
) -> torch.Tensor:
    """One G.pt update: theta, its metric (computed unless given) and a prompt -> theta*."""
    metric = module.hparams["metric"]
    if current is None:
        current = task.evaluate(theta)[metric]
    g = torch.Generator(device=module.pos_device).manual_seed(seed)
    return module.generate(theta, current, prompt, sampler, steps, generator=g).cpu()


def best_prompt(module: GptModule, better: str) -> float:
    """The best metric value of the training data (Sec. 3.4.1 prompts near it); a released model
    has its own (official ``Gpt/tasks.py``: ``best_prompt``)."""
    if "best_prompt" in module.protocol:
        return float(module.protocol["best_prompt"])
    low, high = module.metric_normalizer.low, module.metric_normalizer.high
    return low if better == "min" else high


def resolve_better(module: GptModule, better: str | None) -> str:
    """``min``/``max``: given, or the released model's (``minimize``), or ``min``."""
    if better in ("min", "max"):
        return better
    if better not in (None, "auto"):
        raise ValueError(f"better={better!r}; choose min, max or auto")
    return "min" if module.protocol.get("minimize", True) else "max"


def load_params(path: str | Path, task: Task) -> torch.Tensor:
    """A task network's parameters from a file (a state dict, or a flat vector under the key
    ``params``) -> ``[1, P]`` (or ``[N, P]``), checked against the task's layout."""
    state = safe_load(path)
    if isinstance(state, dict) and "params" in state and torch.is_tensor(state["params"]):
        flat = state["params"].float()
        flat = flat[None] if flat.ndim == 1 else flat
        task.layout.check_flat(flat)
        return flat
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds no state dict or 'params' vector")
    batched = {
        k: v.float()[None] if v.ndim == len(dict(task.layout.entries).get(k, ())) else v.float()
        for k, v in state.items()
    }
    return task.layout.flatten(batched)


def prompt_recursively(
    module: GptModule,
    task: Task,
    theta: torch.Tensor,
    prompt: float,
    recursive: int = 1,
    sampler: str | None = None,
    steps: int | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, list[list[float]]]:
    """``recursive`` G.pt steps from ``theta [N, P]``, each fed the previous output (Sec. 3.4.1,
    3.4.3); returns the last parameters and the metric of every network before and after each
    step."""
    metric = module.hparams["metric"]
    current = task.evaluate(theta)[metric]
    trace = [current.tolist()]
    for k in range(recursive):
        theta = gpt_step(
            module, task, theta, prompt, sampler, steps, seed=seed + k, current=current
        )
        current = task.evaluate(theta)[metric]
        trace.append(current.tolist())
    return theta, trace


def alignment_prompts(
    module: GptModule, current: torch.Tensor, num_prompts: int, prompt_range: str = "auto"
) -> torch.Tensor:
    """Prompts ``[N, num_prompts]`` for the prompt-alignment score. ``data``: one regular grid
    over the training range of the metric, for every network (this project's); ``official``:
    per network from the best prompt to ``prompt_start_coeff`` x its starting metric (official
    ``Gpt/vis.py``, ``one_step_prompting``; reversed for returns). ``auto``: ``official`` for a
    released model, ``data`` otherwise."""
    if prompt_range == "auto":
        prompt_range = "official" if module.protocol else "data"
    if prompt_range == "data":
        low, high = module.metric_normalizer.low, module.metric_normalizer.high
        return torch.linspace(low, high, num_prompts).expand(len(current), num_prompts).clone()
    if prompt_range != "official":
        raise ValueError(f"prompt_range={prompt_range!r}; choose auto, data or official")
    best = float(module.protocol.get("best_prompt", module.metric_normalizer.low))
    coeff = float(module.protocol.get("prompt_start_coeff", 1.0))
    prompts = torch.stack([torch.linspace(best, coeff * float(c), num_prompts) for c in current])
    return prompts if module.protocol.get("minimize", True) else prompts.flip(1)


def one_step_comparison(
    module: GptModule,
    task: Task,
    better: str = "min",
    num_nets: int = 5,
    prompt: float | None = None,
    sampler: str | None = None,
    steps: int | None = None,
) -> dict:
    """Fig. 3.3: one G.pt step against one tuned step of each hand-designed optimizer."""
    metric = module.hparams["metric"]
    theta0 = unseen_inits(task, num_nets)
    prompt = best_prompt(module, better) if prompt is None else prompt
    achieved = task.evaluate(gpt_step(module, task, theta0, prompt, sampler, steps))[metric]
    out = {
        "metric": metric,
        "prompt": prompt,
        "initial": float(task.evaluate(theta0)[metric].mean()),
        "one_step_gpt": float(achieved.mean()),
        "one_step_gpt_std": float(achieved.std()) if num_nets > 1 else 0.0,
        "optimizers": best_one_step(task, theta0, metric, better),
    }
    for name, best in out["optimizers"].items():
        out[f"one_step_best_{name}"] = best["value"]
    return out


def optimization_curves(
    module: GptModule,
    task: Task,
    optimizers: dict,
    better: str = "min",
    num_nets: int = 5,
    max_steps: int = 2048,
    gpt_value: float | None = None,
) -> dict:
    """Fig. 3.4: SGD and Adam (their tuned one-step settings) over many steps vs one G.pt step."""
    metric = module.hparams["metric"]
    theta0 = unseen_inits(task, num_nets)
    curves = {}
    for name in ("sgd", "adam"):
        best = optimizers[name]
        curves[name] = optimization_curve(
            task, theta0, name, best["lr"], best["weight_decay"], max_steps, metric
        )
    out = {"curves": {k: {str(s): v for s, v in c.items()} for k, c in curves.items()}}
    if gpt_value is not None:
        is_better = (lambda a, b: a <= b) if better == "min" else (lambda a, b: a >= b)
        for name, curve in curves.items():
            reach = [s for s, v in sorted(curve.items()) if is_better(v, gpt_value)]
            out[f"steps_for_{name}_to_match_gpt"] = reach[0] if reach else None
    return out


def r2_score(target: torch.Tensor, achieved: torch.Tensor) -> float:
    """Coefficient of determination of ``achieved`` as a prediction of ``target`` (Sec. 3.4.4)."""
    ss_res = ((target - achieved) ** 2).sum()
    ss_tot = ((target - target.mean()) ** 2).sum()
    return float(1.0 - ss_res / ss_tot)


def prompt_alignment(
    module: GptModule,
    task: Task,
    num_nets: int = 16,
    num_prompts: int = 20,
    sampler: str | None = None,
    steps: int | None = None,
    seed: int = 1,
    prompt_range: str = "auto",
) -> dict:
    """Sec. 3.4.4: R^2 between 20 regularly spaced prompts and the metric G.pt's one-step outputs
    achieve, averaged over unseen networks (prompts: ``alignment_prompts``)."""
    metric = module.hparams["metric"]
    theta0 = unseen_inits(task, num_nets, seed=seed)
    current = task.evaluate(theta0)[metric]
    prompts = alignment_prompts(module, current, num_prompts, prompt_range)
    theta = theta0.repeat_interleave(num_prompts, 0)
    out = gpt_step(
        module,
        task,
        theta,
        prompts.flatten(),
        sampler,
        steps,
        current=current.repeat_interleave(num_prompts),
    )
    achieved = task.evaluate(out)[metric].view(num_nets, num_prompts)
    scores = [r2_score(p, a) for p, a in zip(prompts, achieved, strict=True)]
    return {
        "prompt_alignment_r2": float(torch.tensor(scores).mean()),
        "r2_per_network": scores,
        "prompts": prompts.tolist(),
        "achieved": achieved.tolist(),
    }


def recursive_prompting(
    module: GptModule,
    task: Task,
    schemes=("fan_in_uniform", "kaiming", "xavier", "normal"),
    better: str = "min",
    num_nets: int = 5,
    num_steps: int = 10,
    prompt: float | None = None,
    sampler: str | None = None,
    steps: int | None = None,
) -> dict:
    """Fig. 3.6: feed G.pt's output back as its input, from in- and out-of-distribution inits."""
    metric = module.hparams["metric"]
    if prompt is None:  # a released model has its own (official Gpt/tasks.py: recursive_prompt)
        prompt = module.protocol.get("recursive_prompt", best_prompt(module, better))
    out = {}
    for scheme in schemes:
        theta = unseen_inits(task, num_nets, scheme, seed=2)
        values = task.evaluate(theta)[metric]
        trace = [float(values.mean())]
        for k in range(num_steps):
            theta = gpt_step(module, task, theta, prompt, sampler, steps, seed=k, current=values)
            values = task.evaluate(theta)[metric]
            trace.append(float(values.mean()))
        out[scheme] = trace
    return out


def nearest_neighbour_score(
    module: GptModule,
    task: Task,
    train_runs: RunData,
    test_runs: RunData,
    prompts,
    max_test_runs: int = 64,
    sampler: str | None = None,
    steps: int | None = None,
    chunk: int = 65536,
) -> dict:
    """Sec. 3.5, Fig. 3.9: the percentage of test runs for which G.pt's sample from the run's
    initial parameters is closer (Euclidean) to one of that run's own checkpoints than to every
    checkpoint of the training split."""
    if len(test_runs.seeds) == 0:
        raise ValueError("the nearest-neighbour score needs held-out test runs (test_fraction > 0)")
    metric = module.hparams["metric"]
    runs = test_runs.select(torch.arange(min(max_test_runs, len(test_runs.seeds))))
    theta0 = runs.params[:, 0]
    current = runs.metrics[metric][:, 0]
    train_flat = train_runs.params.flatten(0, 1)
    scores = {}
    for prompt in prompts:
        sample = gpt_step(module, task, theta0, float(prompt), sampler, steps, current=current)
        own = torch.cdist(sample[:, None], runs.params).squeeze(1).min(1).values
        nearest_train = torch.full_like(own, float("inf"))
        for part in train_flat.split(chunk):
            nearest_train = torch.minimum(nearest_train, torch.cdist(sample, part).min(1).values)
        scores[f"{float(prompt):.4g}"] = float((own < nearest_train).float().mean() * 100)
    return scores
