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

    Under FSDP (Lightning's weight averaging does not support sharded models) the update pairs the
    parameters of the two modules as they are on each rank. With the model class and its block
    class as wrap units (``common.training.strategies``, ``conf/strategy/fsdp.yaml``), the model
    and this copy are sharded identically, so each pair is the same slice of the same weights and
    the update is exact without communication; full and sharded checkpoints hold the EMA like any
    other weights. A mismatched pair (a wrap policy that shards the two differently) is an error.
    Sampling from the sharded copy all-gathers its weights: every rank must run the forward pass.
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
        named_ema = list(self.module.named_parameters())
        params = list(model.parameters())
        _check_pairs(named_ema, params)
        ema_params = [e for _, e in named_ema]
        if params and params[0].device == ema_params[0].device:
            torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1.0 - decay)
        else:
            for e, p in zip(ema_params, params, strict=True):
                e.lerp_(p.detach().to(e.device), 1.0 - decay)
        for e, b in zip(self.module.buffers(), model.buffers(), strict=True):
            e.copy_(b)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def _check_pairs(named_ema: list[tuple[str, torch.Tensor]], params: list[torch.Tensor]) -> None:
    """The EMA and the model must pair up parameter by parameter, shape by shape (on this rank)."""
    hint = (
        "The EMA copy must have the model's structure; under FSDP both must be wrapped alike: "
        "list the model class and its block class in the auto-wrap policy "
        "(fsdp_wrap_classes in the train config, read by common/conf/strategy/fsdp.yaml)"
    )
    if len(named_ema) != len(params):
        raise ValueError(
            f"EMA and model have different parameter lists ({len(named_ema)} vs {len(params)}). "
            + hint
        )
    for (name, e), p in zip(named_ema, params, strict=True):
        if e.shape != p.shape:
            raise ValueError(
                f"EMA parameter {name!r} has shape {tuple(e.shape)} but the model's has "
                f"{tuple(p.shape)}. " + hint
            )
