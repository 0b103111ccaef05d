"""Prompt G.pt: ``python -m gpt_checkpoints.prompt gpt=<run dir or .safetensors> prompt=0.2``.

Takes a task network's parameters, either a file (``params=net.safetensors``: a state dict of
the task network, or a flat vector under the key ``params``) or fresh ones (``init=kaiming``,
``init_seed=...``), asks G.pt for the prompted metric in one step, or ``recursive=K`` steps that
feed each output back in (Sec. 3.4.1, 3.4.3), and reports the metric the result achieves. The
updated parameters are written as a state dict of the task network (``out=``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import DictConfig

from common.checkpoint import safe_load
from common.cli import hydra_main
from gpt_checkpoints.analysis.evaluation import UNSEEN_SEED, best_prompt, gpt_step
from gpt_checkpoints.model.module import GptModule, load_gpt
from gpt_checkpoints.tasks import task_from_recipe
from gpt_checkpoints.tasks.base import Task


def load_task(module: GptModule, data_root: str | None = None) -> Task:
    spec = module.hparams["task"]
    if module.protocol and spec["name"] == "cartpole":
        raise ValueError(
            "the released cartpole.pt trains Isaac Gym's continuous Cartpole (GPU simulator), "
            "which this package does not emulate; its network loads (load_gpt), but prompting "
            "it here needs that environment. The package's own Cartpole task is discrete"
        )
    task = task_from_recipe(spec["name"], data_root or spec.get("data_root"), spec.get("recipe"))
    if task.layout.to_list() != module.layout.to_list():
        raise ValueError(
            f"G.pt was trained on a {module.layout.describe()} network but task {task.name} builds "
            f"{task.layout.describe()}"
        )
    return task


def load_params(path: str | Path, task: Task) -> torch.Tensor:
    """A task network's parameters from a file -> ``[1, P]`` (or ``[N, P]``), checked."""
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


def resolve_better(module: GptModule, better: str | None) -> str:
    """``min``/``max``: given, or the released model's (``minimize``), or ``min``."""
    if better in ("min", "max"):
        return better
    if better not in (None, "auto"):
        raise ValueError(f"better={better!r}; choose min, max or auto")
    return "min" if module.protocol.get("minimize", True) else "max"


def run(cfg: DictConfig) -> dict:
    module = load_gpt(cfg.gpt, preset=cfg.get("preset"))
    task = load_task(module, cfg.get("data_root"))
    metric = module.hparams["metric"]
    better = resolve_better(module, cfg.get("better"))
    if cfg.get("params"):
        theta = load_params(cfg.params, task)
    else:
        g = torch.Generator().manual_seed(UNSEEN_SEED + int(cfg.init_seed))
        theta = task.init(int(cfg.num_nets), g, cfg.init)
    start = task.evaluate(theta)[metric]
    prompt = float(cfg.prompt) if cfg.get("prompt") is not None else best_prompt(module, better)
    trace = [start.tolist()]
    current = start
    for k in range(int(cfg.recursive)):
        theta = gpt_step(
            module,
            task,
            theta,
            prompt,
            cfg.sampler,
            cfg.sampling_steps,
            seed=cfg.seed + k,
            current=current,
        )
        current = task.evaluate(theta)[metric]
        trace.append(current.tolist())
    out = Path(cfg.out)
    from common.checkpoint import atomic_save

    params = {
        k: v[0] if theta.shape[0] == 1 else v for k, v in task.layout.unflatten(theta).items()
    }
    atomic_save({k: v.contiguous() for k, v in params.items()}, out)
    report = {
        "metric": metric,
        "prompt": prompt,
        "start": trace[0],
        "achieved": trace[-1],
        "trace": trace,
        "params": str(out),
    }
    print(f"task          : {task.name} ({task.layout.num_params} parameters)")
    steps = f"prompt {prompt:.4g}, {cfg.recursive} G.pt step(s)"
    print(f"{metric:<14}: {_fmt(trace[0])} -> {_fmt(trace[-1])} ({steps})")
    print(f"parameters    : {out}")
    return report


def _fmt(values) -> str:
    return ", ".join(f"{v:.4g}" for v in values)


# What makes sense for each number this command reads (common.errors.check_values).
CHECKS = {
    "num_nets": "int>=1",
    "prompt": ">=0|null",
    "recursive": "int>=1",
    "sampling_steps": "int>=1|null",
    "seed": "int>=0",
    "init_seed": "int>=0",
}


@hydra_main(
    "prompt",
    input_paths=("gpt", "params", "data_root"),
    checks=CHECKS,
    legacy_flags={"steps": "sampling_steps"},  # the former spelling, kept one release
)
def main(cfg: DictConfig) -> None:
    report = run(cfg)
    if cfg.get("report"):
        Path(cfg.report).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    from gpt_checkpoints.prompt import main as _main

    _main()
