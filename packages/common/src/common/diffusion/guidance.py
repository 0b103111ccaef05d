"""Classifier-free guidance (thesis Sec. 2.3.1).

``eps_hat(x, c) = eps(x, null) + s * (eps(x, c) - eps(x, null))``, with the conditional and the
unconditional predictions computed in one batched forward pass.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def guided_prediction(
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    t: torch.Tensor,
    y: torch.Tensor,
    null_y: torch.Tensor | int,
    cfg_scale: float,
    guided_channels: int | None = None,
    **model_kwargs,
) -> torch.Tensor:
    """Guided model output for a batch of N inputs, from one forward pass on 2N.

    ``null_y`` is the null label (an int, or a tensor of N labels). Only the first
    ``guided_channels`` output channels are guided (default: as many as ``x`` has, i.e. the whole
    prediction); further channels, such as a learned variance, are taken from the conditional pass.
    ``cfg_scale == 1`` returns the conditional prediction.
    """
    n = x.shape[0]
    if not isinstance(null_y, torch.Tensor):
        null_y = torch.full_like(y, null_y)
    out = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null_y]), **model_kwargs)
    cond, uncond = out[:n], out[n:]
    k = x.shape[1] if guided_channels is None else guided_channels
    guided = uncond[:, :k] + cfg_scale * (cond[:, :k] - uncond[:, :k])
    return torch.cat([guided, cond[:, k:]], dim=1)
