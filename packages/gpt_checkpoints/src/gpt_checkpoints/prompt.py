"""Prompt G.pt: ``python -m gpt_checkpoints.prompt ckpt=<run dir or .safetensors> prompt=0.2``.

Takes a task network's parameters, either a file (``params=net.safetensors``: a state dict of
the task network, or a flat vector under the key ``params``) or fresh ones (``init=kaiming``,
``init_seed=...``), asks G.pt (on ``device=``) for the prompted metric in one step, or
``recursive=K`` steps that feed each output back in (Sec. 3.4.1, 3.4.3), and reports the metric
the result achieves. Writes into the folder ``out=`` the updated parameters as a state dict of the
task network (``prompted_params.safetensors``) and the report (``report.json``).
"""

from __future__ import annotations

from omegaconf import DictConfig

from common.cli import hydra_main

PARAMS_FILE = "prompted_params.safetensors"
REPORT_FILE = "report.json"

# What makes sense for each number this command reads (common.errors.check_values).
CHECKS = {
    "num_nets": "int>=1",
    "prompt": ">=0|null",
    "recursive": "int>=1",
    "sampling_steps": "int>=1|null",
    "seed": "int>=0",
    "init_seed": "int>=0",
}


@hydra_main("prompt", checks=CHECKS)
def main(cfg: DictConfig) -> None:
    import json
    from pathlib import Path

    import torch

    from common.checkpoint import atomic_save, atomic_write_bytes
    from common.devices import pick_device
    from gpt_checkpoints.analysis.evaluation import (
        UNSEEN_SEED,
        best_prompt,
        load_params,
        prompt_recursively,
        resolve_better,
    )
    from gpt_checkpoints.model.module import load_gpt, load_task

    device = pick_device(cfg.device)
    module = load_gpt(cfg.ckpt, preset=cfg.preset).to(device)
    task = load_task(module, cfg.data.root)
    metric = module.hparams["metric"]
    if cfg.params:
        theta = load_params(cfg.params, task)
    else:
        g = torch.Generator().manual_seed(UNSEEN_SEED + int(cfg.init_seed))
        theta = task.init(int(cfg.num_nets), g, cfg.init)
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
    atomic_write_bytes(json.dumps(report, indent=2).encode(), out / REPORT_FILE)
    print(f"task          : {task.name} ({task.layout.num_params} parameters)")
    steps = f"prompt {prompt:.4g}, {cfg.recursive} G.pt step(s) on {device}"
    print(f"{metric:<14}: {_fmt(trace[0])} -> {_fmt(trace[-1])} ({steps})")
    print(f"parameters    : {out / PARAMS_FILE}")
    print(f"report        : {out / REPORT_FILE}")


def _fmt(values) -> str:
    return ", ".join(f"{v:.4g}" for v in values)


if __name__ == "__main__":
    from gpt_checkpoints.prompt import main as _main

    _main()
