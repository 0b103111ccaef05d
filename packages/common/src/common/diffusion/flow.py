"""Rectified flow: a second training objective for every diffusion model here.

Interpolant ``x_t = (1 - t) x_0 + t z`` with ``z ~ N(0, I)`` and t in [0, 1]; the network regresses
the constant velocity ``v = z - x_0`` (Liu et al.; Esser et al. for logit-normal t). Samples are
drawn by integrating ``dx/dt = v(x, t)`` from t = 1 (noise) to t = 0 with Euler or Heun steps.
The network sees ``t * time_scale`` as its timestep so that a DiT's timestep embedder, built for
DDPM's 0..999, is used over the same range.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from common.diffusion.gaussian import _last
from common.diffusion.likelihood import mean_flat
from common.diffusion.progress import with_progress


class RectifiedFlow:
    def __init__(
        self,
        time_sampling: str = "logit_normal",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        time_scale: float = 1000.0,
        num_steps: int = 50,
        method: str = "euler",
        shift: float = 1.0,
    ) -> None:
        if time_sampling not in ("uniform", "logit_normal"):
            raise ValueError(
                f"time_sampling must be 'uniform' or 'logit_normal', got {time_sampling!r}"
            )
        if method not in ("euler", "heun"):
            raise ValueError(f"flow sampler must be 'euler' or 'heun', got {method!r}")
        self.time_sampling = time_sampling
        self.logit_mean = logit_mean
        self.logit_std = logit_std
        self.time_scale = time_scale
        self.num_steps = num_steps
        self.method = method
        self.shift = shift

    @property
    def num_timesteps(self) -> int:
        """Number of network evaluations of a sampling run (Heun uses about twice as many)."""
        return self.num_steps

    def sample_timesteps(self, n: int, device, generator: torch.Generator | None = None):
        """Training times t in (0, 1): uniform, or ``sigmoid(N(logit_mean, logit_std))``."""
        if self.time_sampling == "uniform":
            return torch.rand(n, device=device, generator=generator)
        u = torch.randn(n, device=device, generator=generator)
        return torch.sigmoid(self.logit_mean + self.logit_std * u)

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``x_t = (1 - t) x_0 + t z``."""
        t = t.view(-1, *([1] * (x_start.ndim - 1))).to(x_start.dtype)
        return (1 - t) * x_start + t * noise

    def _velocity(self, model, x, t, model_kwargs) -> torch.Tensor:
        out = model(x, t * self.time_scale, **(model_kwargs or {}))
        if isinstance(out, tuple):
            out = out[0]
        channels = x.shape[1]
        if out.shape[1] not in (channels, 2 * channels):
            raise ValueError(
                f"model output has {out.shape[1]} channels for {channels}-channel inputs; a flow "
                "model predicts one velocity per channel (extra learned-sigma channels are ignored)"
            )
        return out[:, :channels]

    def training_losses(self, model, x_start, t, model_kwargs=None, noise=None) -> dict:
        """Per-sample ``loss`` (= ``mse``): ``||v_theta(x_t, t) - (z - x_0)||^2`` over dims."""
        if noise is None:
            noise = torch.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise)
        v = self._velocity(model, x_t, t, model_kwargs)
        mse = mean_flat((v - (noise - x_start)) ** 2)
        return {"loss": mse, "mse": mse}

    def time_grid(self, num_steps: int, device) -> torch.Tensor:
        """Times 1 = t_0 > ... > t_N = 0, optionally shifted toward noise (``shift > 1``)."""
        t = torch.linspace(1.0, 0.0, num_steps + 1, device=device, dtype=torch.float64)
        if self.shift != 1.0:
            t = self.shift * t / (1 + (self.shift - 1) * t)
        return t.float()

    def sample_loop_progressive(
        self,
        model,
        shape,
        noise=None,
        model_kwargs=None,
        device=None,
        progress=False,
        num_steps: int | None = None,
        method: str | None = None,
        generator: torch.Generator | None = None,
    ) -> Iterator[torch.Tensor]:
        """Yield the state after each integration step from noise (t = 1) to data (t = 0)."""
        num_steps = num_steps or self.num_steps
        method = method or self.method
        if device is None:
            device = noise.device if noise is not None else next(model.parameters()).device
        x = noise if noise is not None else torch.randn(*shape, device=device, generator=generator)
        ts = self.time_grid(num_steps, device)
        with torch.no_grad():
            for i in with_progress(range(num_steps), progress, f"flow-{method}"):
                t_cur, t_next = ts[i], ts[i + 1]
                dt = t_next - t_cur  # negative
                batch_t = torch.full((x.shape[0],), float(t_cur), device=device)
                v = self._velocity(model, x, batch_t, model_kwargs)
                x_next = x + dt * v
                if method == "heun" and float(t_next) > 0:
                    batch_next = torch.full((x.shape[0],), float(t_next), device=device)
                    v_next = self._velocity(model, x_next, batch_next, model_kwargs)
                    x_next = x + dt * 0.5 * (v + v_next)
                x = x_next
                yield x

    def sample_loop(
        self,
        model,
        shape,
        noise=None,
        model_kwargs=None,
        device=None,
        progress=False,
        num_steps=None,
        method=None,
        generator=None,
    ) -> torch.Tensor:
        """Integrate the learned ODE; Heun's last step falls back to Euler (t_next = 0)."""
        return _last(
            self.sample_loop_progressive(
                model, shape, noise, model_kwargs, device, progress, num_steps, method, generator
            )
        )
