"""Exponential moving average of weights (thesis Sec. 2.4: decay 0.9999, used for all results)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    """Holds ``module``, a frozen copy of a model whose weights track the model's by EMA.

    Starts as an exact copy. ``update(model)`` applies ``ema <- decay * ema + (1 - decay) * param``
    to every parameter and copies buffers. Being an ``nn.Module``, it lives in the owner's state
    dict (``ema.module.*``), so it is saved in and restored from checkpoints with the run.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999) -> None:
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float | None = None) -> None:
        decay = self.decay if decay is None else decay
        ema_params = list(self.module.parameters())
        params = list(model.parameters())
        if len(ema_params) != len(params):
            raise ValueError("EMA and model have different parameter lists")
        if params and params[0].device == ema_params[0].device:
            torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1.0 - decay)
        else:
            for e, p in zip(ema_params, params, strict=True):
                e.lerp_(p.detach().to(e.device), 1.0 - decay)
        for e, b in zip(self.module.buffers(), model.buffers(), strict=True):
            e.copy_(b)

    @torch.no_grad()
    def copy_from(self, model: nn.Module) -> None:
        """Reset the average to the model's current weights (decay 0)."""
        self.update(model, decay=0.0)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)
