"""Hand-designed optimizers as baselines for G.pt (thesis Sec. 3.4.1, Figs. 3.3 and 3.4).

One step: each optimizer takes one update of randomly initialised networks on the full training
set's loss, for every point of the thesis' grid (footnote 2: the PyTorch default learning rate,
x10 and /10; weight decay 0, 5e-5, 5e-4); the best setting by mean metric is reported. Curves:
the tuned SGD and Adam run for many mini-batch steps and their metric is recorded along the way.
All networks of a batch update together (stacked parameters, element-wise optimizers), as in
``tasks.supervised.SupervisedTask.train_runs``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gpt_checkpoints.tasks.supervised import SupervisedTask

# name -> (constructor, PyTorch's default learning rate)
OPTIMIZERS = {
    "sgd": (torch.optim.SGD, 1e-3),
    "sgd_momentum": (lambda p, **kw: torch.optim.SGD(p, momentum=0.9, **kw), 1e-3),
    "adam": (torch.optim.Adam, 1e-3),
    "adamw": (torch.optim.AdamW, 1e-3),
    "rmsprop": (torch.optim.RMSprop, 1e-2),
    "adagrad": (torch.optim.Adagrad, 1e-2),
}
WEIGHT_DECAYS = (0.0, 5e-5, 5e-4)


def _require_supervised(task) -> SupervisedTask:
    if not isinstance(task, SupervisedTask):
        raise ValueError(
            f"gradient-optimizer baselines need a supervised task with a differentiable loss, "
            f"not {task.name}; evaluate it with analyses=[alignment,recursive,memorization]"
        )
    return task


def _minimise(better: str):
    return (lambda a, b: a < b) if better == "min" else (lambda a, b: a > b)


def one_step(
    task, theta0: torch.Tensor, optimizer: str, lr: float, weight_decay: float
) -> torch.Tensor:
    """Parameters after one full-batch update of every network in ``theta0 [N, P]``."""
    task = _require_supervised(task)
    cls, _ = OPTIMIZERS[optimizer]
    theta = theta0.clone().requires_grad_(True)
    opt = cls([theta], lr=lr, weight_decay=weight_decay)
    data = task.data
    logits = task.forward(theta, data.x_train)
    loss = torch.nn.functional.cross_entropy(
        logits.transpose(1, 2), data.y_train.expand(theta.shape[0], -1), reduction="none"
    ).mean(1)
    loss.sum().backward()
    opt.step()
    return theta.detach()


def best_one_step(
    task,
    theta0: torch.Tensor,
    metric: str,
    better: str = "min",
    optimizers: Sequence[str] = tuple(OPTIMIZERS),
) -> dict[str, dict]:
    """For each optimizer, the grid point with the best mean ``metric`` after one step."""
    is_better = _minimise(better)
    results = {}
    for name in optimizers:
        default = OPTIMIZERS[name][1]
        best = None
        for lr in (default / 10, default, default * 10):
            for wd in WEIGHT_DECAYS:
                values = task.evaluate(one_step(task, theta0, name, lr, wd))[metric]
                value = float(values.mean())
                if best is None or is_better(value, best["value"]):
                    best = {
                        "value": value,
                        "std": float(values.std()),
                        "lr": lr,
                        "weight_decay": wd,
                    }
        results[name] = best
    return results


def optimization_curve(
    task,
    theta0: torch.Tensor,
    optimizer: str,
    lr: float,
    weight_decay: float,
    steps: int,
    metric: str,
    batch_size: int = 64,
    seed: int = 0,
    record: Sequence[int] | None = None,
) -> dict[int, float]:
    """Mean ``metric`` of networks trained by ``optimizer`` with mini-batches at steps ``record``
    (default: 0 and powers of two up to ``steps``); Fig. 3.4."""
    task = _require_supervised(task)
    record = sorted(set(record or [0] + [2**k for k in range(steps.bit_length())] + [steps]))
    cls, _ = OPTIMIZERS[optimizer]
    theta = theta0.clone().requires_grad_(True)
    opt = cls([theta], lr=lr, weight_decay=weight_decay)
    data = task.data
    g = torch.Generator().manual_seed(seed)
    n = theta.shape[0]
    curve = {}
    for step in range(steps + 1):
        if step in record:
            curve[step] = float(task.evaluate(theta.detach())[metric].mean())
        if step == steps:
            break
        idx = torch.randint(data.x_train.shape[0], (n, batch_size), generator=g)
        loss = task.loss_fn(theta, data.x_train[idx], data.y_train[idx]).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return curve
