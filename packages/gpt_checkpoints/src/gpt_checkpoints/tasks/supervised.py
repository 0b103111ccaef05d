"""Supervised tasks: classification with the SGD recipe of Sec. 3.3, batched over runs.

Recipe (Sec. 3.3): SGD, momentum 0.9, lr 0.1, weight decay 5e-4, half-period cosine annealing,
25 epochs for the MLP and 50 for the CNN, weights and biases ~ U(-1/sqrt(n), 1/sqrt(n)) with n
the fan-in; the recipes (the thesis', the released datasets') are ``conf/task/*.yaml``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gpt_checkpoints.tasks.base import PermutationGroup, StepCallback, Task
from gpt_checkpoints.tasks.networks import MLP
from gpt_checkpoints.tasks.sources import SupervisedData, load_source


class SupervisedTask(Task):
    """Classification with the SGD recipe of Sec. 3.3, batched over runs; the recipe's values
    come from ``conf/task/<name>.yaml`` (``tasks.build_task``)."""

    def __init__(
        self,
        name: str,
        network: nn.Module,
        source: str,
        permutation_groups: tuple[PermutationGroup, ...],
        *,
        epochs: int,
        batch_size: int,
        lr: float,
        momentum: float,
        weight_decay: float,
        nesterov: bool,
        schedule: str,
        augment: str | None,
        data_root: str | None = None,
        eval_chunk: int = 1024,
    ) -> None:
        super().__init__(
            name,
            network,
            ("train_loss", "test_loss", "train_error", "test_error"),
            permutation_groups,
        )
        self.source = source
        self.data_root = data_root
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        if schedule not in ("cosine_step", "cosine_epoch"):
            raise ValueError(f"schedule={schedule!r}; choose cosine_step or cosine_epoch")
        if augment not in (None, "flip_crop"):
            raise ValueError(f"augment={augment!r}; choose null or flip_crop")
        self.nesterov, self.schedule, self.augment = nesterov, schedule, augment
        self.eval_chunk = eval_chunk
        self._data: SupervisedData | None = None
        self.input_ndim = 1 if isinstance(network, MLP) else 3
        self.iterations = epochs * (self.data.x_train.shape[0] // batch_size)

    @property
    def data(self) -> SupervisedData:
        if self._data is None:
            self._data = load_source(self.source, self.data_root)
        if self._data.x_train.device != self.device:
            self._data = self._data.to(self.device)
        return self._data

    def config(self) -> dict:
        return {
            "name": self.name,
            "source": self.source,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "momentum": self.momentum,
            "weight_decay": self.weight_decay,
            "nesterov": self.nesterov,
            "schedule": self.schedule,
            "augment": self.augment,
            "iterations": self.iterations,
        }

    def loss_fn(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy per network: ``theta [N, P]``, ``x [N, B, ...]``, ``y [N, B]``."""
        logits = self.forward(theta, x)
        return (
            F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
            .view(y.shape)
            .mean(1)
        )

    def train_runs(self, theta0: torch.Tensor, seeds: list[int], callback: StepCallback) -> None:
        """Algorithm 1 for ``len(seeds)`` runs at once; ``callback(i, theta)`` sees every iterate.

        Run r shuffles the training set with ``Generator(seeds[r] + 1)`` each epoch (the seed itself
        draws the initialisation, see ``collect``), so its trajectory does not depend on which
        other runs share its batch.
        """
        data = self.data
        x_train, y_train = data.x_train, data.y_train
        n_train = x_train.shape[0]
        steps_per_epoch = n_train // self.batch_size
        theta = theta0.to(self.device).clone().requires_grad_(True)
        opt = torch.optim.SGD(
            [theta],
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            nesterov=self.nesterov,
        )
        total = self.iterations
        if self.schedule == "cosine_epoch":  # official data_gen: lr set once per epoch
            total = self.epochs

            def factor(i: int) -> float:
                epoch = min(i // steps_per_epoch, self.epochs)
                return 0.5 * (1.0 + math.cos(math.pi * epoch / total))
        else:

            def factor(i: int) -> float:
                return 0.5 * (1.0 + math.cos(math.pi * min(i, total) / total))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        gens = [torch.Generator().manual_seed(int(s) + 1) for s in seeds]
        callback(0, theta.detach())
        it = 0
        for _ in range(self.epochs):
            order = torch.stack([torch.randperm(n_train, generator=g) for g in gens])
            order = order.to(self.device)
            for b in range(steps_per_epoch):
                idx = order[:, b * self.batch_size : (b + 1) * self.batch_size]
                x = x_train[idx]
                if self.augment == "flip_crop":
                    x = flip_crop(x, gens)
                loss = self.loss_fn(theta, x, y_train[idx]).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                it += 1
                callback(it, theta.detach())

    @torch.no_grad()
    def evaluate(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Train/test cross-entropy and top-1 error in percent (the official unit) of each
        network."""
        data = self.data
        out: dict[str, list[torch.Tensor]] = {k: [] for k in self.metric_names}
        for chunk in theta.to(self.device).split(self.eval_chunk):
            for split, x, y in (
                ("train", data.x_train, data.y_train),
                ("test", data.x_test, data.y_test),
            ):
                logits = self.forward(chunk, x)  # [n, B, classes]
                ce = F.cross_entropy(
                    logits.transpose(1, 2), y.expand(chunk.shape[0], -1), reduction="none"
                )
                out[f"{split}_loss"].append(ce.mean(1))
                out[f"{split}_error"].append((logits.argmax(-1) != y).float().mean(1) * 100)
        return {k: torch.cat(v).cpu() for k, v in out.items()}


def flip_crop(x: torch.Tensor, gens: list[torch.Generator], pad: int = 4) -> torch.Tensor:
    """Official CIFAR-10 training augmentation per image: horizontal flip with p = 0.5, then a
    random crop of the original size from the image zero-padded by ``pad`` (``x [R, B, C, H,
    W]``, run ``r`` drawing from ``gens[r]``)."""
    r, b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    draws = [
        (torch.rand(b, generator=g) < 0.5, torch.randint(0, 2 * pad, (b, 2), generator=g))
        for g in gens
    ]  # official random_crop draws randint(0, H + 2 pad - H): offsets 0 .. 2 pad - 1
    flips = torch.stack([f for f, _ in draws]).to(x.device)  # [R, B]
    offsets = torch.stack([o for _, o in draws]).to(x.device)  # [R, B, 2]
    rows = offsets[..., 0, None] + torch.arange(h, device=x.device)  # [R, B, h]
    cols = offsets[..., 1, None] + torch.arange(w, device=x.device)  # [R, B, w]
    cols = torch.where(flips[..., None], cols.flip(-1), cols)
    runs = torch.arange(r, device=x.device)[:, None, None, None]
    images = torch.arange(b, device=x.device)[None, :, None, None]
    crops = padded[runs, images, :, rows[..., :, None], cols[..., None, :]]  # [R, B, h, w, C]
    return crops.permute(0, 1, 4, 2, 3).contiguous()
