"""The regularisers of the residual flow (thesis Sec. 4.3.1, Eq. 4.5): L_TV, the Huber total
variation, which also scores flip inference and dataset filtering, and L_I, the identity loss.
Official ``total_variation_loss`` / ``flow_identity_loss`` (``models/losses/loss.py``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def total_variation_huber(field: Tensor, delta: float = 1.0, reduction: str = "mean") -> Tensor:
    """L_TV of Sec. 4.3.1: Huber loss of the x and y finite differences of a flow or grid.

    ``field`` is [N, H, W, 2] (channels last, like grids). ``delta`` = 1.0 (in normalised grid
    units, i.e. half the image width) matches the official implementation; differences between
    neighbouring pixels are far smaller, so in practice the loss is quadratic (0.5 d^2) and delta
    only caps the pull of flow discontinuities. Each term is a mean over its elements;
    ``reduction="none"`` returns [N] per-sample values, "mean" their mean.
    """
    dx = field[:, :, 1:] - field[:, :, :-1]
    dy = field[:, 1:] - field[:, :-1]
    per_sample = sum(
        F.huber_loss(d, torch.zeros_like(d), delta=delta, reduction="none").flatten(1).mean(1)
        for d in (dx, dy)
    )
    return _reduce(per_sample, reduction)


def identity_loss(flow_residual: Tensor, reduction: str = "mean") -> Tensor:
    """L_I = ||G - identity||^2 of Sec. 4.3.1, on the residual flow [N, H, W, 2].

    Averaged over pixels AND the two coordinates (i.e. half the mean squared vector norm), as in
    the official code, so that the thesis' weight lambda_I = 1 keeps its meaning.
    """
    return _reduce(flow_residual.pow(2).flatten(1).mean(1), reduction)


def _reduce(per_sample: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return per_sample
    if reduction == "mean":
        return per_sample.mean()
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


# ----------------------------------------------------------------------------------------------
# VGG-16 backbones (torchvision layout) -> lpips' ``net.sliceK.I`` modules
# ----------------------------------------------------------------------------------------------
