"""Classifier-free guidance (thesis Sec. 2.3.1), with a guidance interval (Kynkaanniemi et al.
2024) for every sampler.

``eps_hat(x, c) = eps(x, null) + s * (eps(x, c) - eps(x, null))``, with the conditional and the
unconditional predictions computed in one batched forward pass (DiT's ``forward_with_cfg``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Guidance:
    """Guidance at ``scale`` with the ``null_label`` class, on the first ``channels`` output
    channels (None: all of them; the official DiT, SiT and LightningDiT guide 3, REPA all), only
    where ``interval`` = [low, high] holds the sampler's t (None: every t).

    Where t is measured is each sampler's own convention: DDPM/DDIM ``timestep / T`` (1 = noise);
    REPA and our flow t = 1 noise (REPA's ``guidance_high=0.7`` is ``(0.0, 0.7)``); SiT and
    LightningDiT t = 1 data (LightningDiT's ``cfg_interval_start=0.125`` is ``(0.125, 1.0)``)."""

    scale: float
    null_label: int
    interval: tuple[float, float] | None = None
    channels: int | None = None

    def __post_init__(self) -> None:
        if not math.isfinite(float(self.scale)) or self.scale < 0:
            raise ValueError(f"cfg_scale={self.scale} is not a guidance scale; pass one >= 0")
        if self.interval is not None:
            low, high = (float(v) for v in self.interval)
            if not (math.isfinite(low) and math.isfinite(high) and low <= high):
                raise ValueError(
                    f"cfg_interval={list(self.interval)} is not an interval; pass [low, high] "
                    "with low <= high"
                )

    def active(self, t: float) -> bool:
        """Guided at ``t``: the scale is not 1 and ``t`` lies in the interval."""
        low, high = self.interval or (-math.inf, math.inf)
        return self.scale != 1.0 and low <= float(t) <= high

    def pair(
        self,
        model: Callable[..., torch.Tensor],
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor,
        active: bool = True,
        **model_kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward pass on ``[x; x]`` with labels ``[y; null]``: (guided output, its twin),
        the two halves of DiT's ``forward_with_cfg``. The guided channels are
        ``uncond + s (cond - uncond)`` (the conditional ones when not ``active``); the other
        channels (a learned variance) are each half's own."""
        null = torch.full_like(y, self.null_label)
        out = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]), **model_kwargs)
        cond, uncond = out.chunk(2)
        k = x.shape[1] if self.channels is None else self.channels
        guided = cond[:, :k]
        if active:
            guided = uncond[:, :k] + self.scale * (cond[:, :k] - uncond[:, :k])
        return torch.cat([guided, cond[:, k:]], 1), torch.cat([guided, uncond[:, k:]], 1)

    def __call__(self, model, x, t, y, at: float | None = None, **model_kwargs) -> torch.Tensor:
        """The guided prediction: one pass on 2N inputs where the interval holds ``at`` (default
        ``t``; DDPM passes ``timestep / T``), the conditional pass on N outside it."""
        if not self.active(float(t.flatten()[0]) if at is None else at):
            return model(x, t, y, **model_kwargs)
        return self.pair(model, x, t, y, **model_kwargs)[0]
