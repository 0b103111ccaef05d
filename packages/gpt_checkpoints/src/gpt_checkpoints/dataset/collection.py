"""Collecting a checkpoint dataset (thesis Algorithm 1, Sec. 3.3; ``python -m
gpt_checkpoints.collect``): runs train batched (``Task.train_runs``), each run saves
``checkpoints_per_run`` checkpoints (200 in the thesis: the initial one, the final one and the
rest at random iterations) with the task's metrics, one shard per run (``dataset.store``).

Run ``s`` is a pure function of its seed: the seed draws its initialisation, ``s + 1`` its data
order (``s + 2`` is reserved for task-internal randomness, e.g. the Cartpole critic and
environments) and ``s + 3`` the iterations it saves. Re-running a killed collection finishes it:
done runs are skipped, none is lost or duplicated.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from common.devices import pick_device
from gpt_checkpoints.dataset.store import CheckpointStore
from gpt_checkpoints.tasks import build_task
from gpt_checkpoints.tasks.base import Task

log = logging.getLogger(__name__)


@dataclass
class CollectResult:
    out: Path
    trained: int
    filtered: int
    skipped: int
    seconds: float

    @property
    def runs_per_minute(self) -> float:
        return 60.0 * self.trained / max(self.seconds, 1e-9)


def save_schedule(seed: int, iterations: int, checkpoints: int) -> torch.Tensor:
    """Sorted iterations a run saves: 0, ``iterations`` and random ones in between (Sec. 3.3).

    With fewer than ``checkpoints`` iterations in the run, it saves every iterate."""
    if iterations + 1 <= checkpoints:
        return torch.arange(iterations + 1)
    g = torch.Generator().manual_seed(int(seed) + 3)
    middle = torch.randperm(iterations - 1, generator=g)[: checkpoints - 2] + 1
    return torch.cat([torch.tensor([0]), middle.sort().values, torch.tensor([iterations])])


def bad_reason(params: torch.Tensor, max_abs: float) -> str | None:
    """Why a run is filtered: non-finite parameters or weights beyond ``max_abs`` (Sec. 3.3)."""
    if not torch.isfinite(params).all():
        return "non-finite parameters (diverged)"
    peak = params.abs().max().item()
    if peak > max_abs:
        return f"max |w| = {peak:.3g} > {max_abs}"
    return None


def train_batch(
    task: Task, seeds: list[int], checkpoints: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Train the runs of ``seeds`` together: saved ``params [R, C, P]`` and ``iteration [R, C]``."""
    theta0 = torch.cat([task.init(1, torch.Generator().manual_seed(int(s))) for s in seeds])
    schedules = torch.stack([save_schedule(s, task.iterations, checkpoints) for s in seeds])
    n_runs, n_saved = schedules.shape
    mask = torch.zeros(n_runs, task.iterations + 1, dtype=torch.bool)
    mask.scatter_(1, schedules, True)
    saved = torch.empty(n_runs, n_saved, task.layout.num_params)
    cursor = torch.zeros(n_runs, dtype=torch.long)

    def on_step(it: int, theta: torch.Tensor) -> None:
        rows = mask[:, it].nonzero().squeeze(1)
        if rows.numel():
            saved[rows, cursor[rows]] = theta[rows.to(theta.device)].float().cpu()
            cursor[rows] += 1

    task.train_runs(theta0, seeds, on_step)
    if not (cursor == n_saved).all():
        raise RuntimeError(
            f"task {task.name} reported {task.iterations} iterations but its training called "
            "back a different number of times"
        )
    return saved, schedules


def collect(
    task: Task,
    out: str | Path,
    runs: int,
    checkpoints_per_run: int = 200,
    batch_runs: int = 256,
    seed_offset: int = 0,
    max_abs: float = 10.0,
    data_root: str | None = None,
) -> CollectResult:
    """Train runs with seeds ``seed_offset .. seed_offset + runs - 1`` that are not done yet;
    ``data_root`` (where the task read its data) is recorded for the G.pt trained on them."""
    if runs <= 0 or batch_runs <= 0 or checkpoints_per_run < 2:
        raise ValueError("runs and batch_runs must be positive and checkpoints_per_run >= 2")
    store = CheckpointStore(out)
    store.init_manifest(
        {
            "task": task.name,
            "recipe": task.config(),
            "layout": task.layout.to_list(),
            "metrics": list(task.metric_names),
            "checkpoints_per_run": min(checkpoints_per_run, task.iterations + 1),
            "permutation_groups": [
                [size, [list(m) for m in members]] for size, members in task.permutation_groups
            ],
            "max_abs": max_abs,
            "data_root": data_root,
        }
    )
    seeds = list(range(seed_offset, seed_offset + runs))
    todo = [s for s in seeds if not store.is_done(s)]
    skipped = len(seeds) - len(todo)
    if skipped:
        log.info(
            "%d of %d runs already in %s; training the other %d", skipped, runs, out, len(todo)
        )
    start, trained, filtered = time.perf_counter(), 0, 0
    for b in range(math.ceil(len(todo) / batch_runs)):
        batch = todo[b * batch_runs : (b + 1) * batch_runs]
        params, iteration = train_batch(task, batch, checkpoints_per_run)
        metrics = task.evaluate(params.flatten(0, 1))
        metrics = {k: v.view(len(batch), -1) for k, v in metrics.items()}
        for r, seed in enumerate(batch):
            reason = bad_reason(params[r], max_abs)
            if reason is None:
                reason = bad_reason(torch.stack(list(metrics.values()))[:, r], math.inf)
            if reason is not None:
                store.write_filtered(seed, reason)
                filtered += 1
                continue
            store.write_run(
                seed, params[r], iteration[r], {k: v[r] for k, v in metrics.items()}, task.name
            )
            trained += 1
        done = skipped + (b * batch_runs) + len(batch)
        elapsed = time.perf_counter() - start
        log.info("%d/%d runs (%.0f runs/min)", done, runs, 60 * (done - skipped) / elapsed)
    result = CollectResult(Path(out), trained, filtered, skipped, time.perf_counter() - start)
    return result


def collect_dataset(cfg: DictConfig) -> CollectResult:
    """The job of ``python -m gpt_checkpoints.collect`` (``conf/collect.yaml``): build
    ``cfg.task`` on ``cfg.device``, ``collect`` its runs into ``cfg.out`` and print the store's
    counts."""
    device = pick_device(cfg.device)
    recipe = OmegaConf.to_container(cfg.task.recipe, resolve=True) or {}
    task = build_task(cfg.task.name, data_root=cfg.data.root, **recipe).to(device)
    result = collect(
        task,
        cfg.out,
        runs=cfg.runs,
        checkpoints_per_run=cfg.checkpoints_per_run,
        batch_runs=cfg.batch_runs,
        seed_offset=cfg.seed_offset,
        max_abs=cfg.max_abs,
        data_root=str(Path(cfg.data.root).resolve()) if cfg.data.root else None,
    )
    store = CheckpointStore(cfg.out)
    out = Path(cfg.out).resolve()
    print(f"checkpoint dataset : {out} (trained on {device})")
    print(
        f"runs               : {len(store.seeds())} stored, {len(store.filtered_seeds())} filtered "
        f"({result.trained} trained now, {result.skipped} already there, "
        f"{result.runs_per_minute:.0f} runs/min)"
    )
    metric = "" if "test_loss" in task.metric_names else f" metric={task.metric_names[0]}"
    print(
        f"next               : python -m gpt_checkpoints.train task={task.name} dataset={out}"
        + metric
    )
    return result
