"""Checkpoint collection speed: batched runs vs one run at a time (thesis Algorithm 1, Sec. 3.3).

Both rows train the same runs of the digits MLP recipe (64-10-10, SGD momentum 0.9, lr 0.1,
wd 5e-4, cosine, 25 epochs) and keep the same 200 checkpoints per run, in this process, with
``gpt_checkpoints.dataset.collection.train_batch`` followed by the metric evaluation of every
saved checkpoint (train/test loss and error). ``batched``: all runs stacked into one vmapped
optimisation; ``one at a time``: a loop over the same seeds with one run per call. Columns: runs,
seconds, runs/minute and the speed-up of the batched row. Batched and single runs follow the same
trajectories (tests/gpt_checkpoints/test_collect.py), so the rows do the same work.
"""

from __future__ import annotations

import argparse
import time

import torch

from gpt_checkpoints.dataset.collection import train_batch
from gpt_checkpoints.tasks import build_task


def _time(task, seeds: list[int], per_call: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(seeds), per_call):
        params, _ = train_batch(task, seeds[i : i + per_call], checkpoints=200)
        task.evaluate(params.flatten(0, 1))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="mlp_digits")
    parser.add_argument("--batched-runs", type=int, default=256)
    parser.add_argument("--single-runs", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    args = parser.parse_args()
    overrides = {"epochs": args.epochs} if args.epochs else {}
    task = build_task(args.task, **overrides)
    params, iters = task.layout.num_params, task.iterations
    print(f"task {task.name}: {params} parameters, {iters} iterations/run")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    single = _time(task, list(range(args.single_runs)), per_call=1)
    batched = _time(task, list(range(args.batched_runs)), per_call=args.batched_runs)
    rate_single = 60 * args.single_runs / single
    rate_batched = 60 * args.batched_runs / batched
    print(f"{'row':<14} {'runs':>6} {'seconds':>9} {'runs/min':>10} {'speed-up':>9}")
    one = "one at a time"
    print(f"{one:<14} {args.single_runs:>6} {single:>9.1f} {rate_single:>10.1f} {1:>9.1f}")
    print(
        f"{'batched':<14} {args.batched_runs:>6} {batched:>9.1f} {rate_batched:>10.1f} "
        f"{rate_batched / rate_single:>9.1f}"
    )


if __name__ == "__main__":
    main()
