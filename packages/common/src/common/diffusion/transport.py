"""Transport: the flow-matching family of SiT, REPA, LightningDiT and our rectified flow.

``x_t = alpha_t x + sigma_t z`` (x data, z ~ N(0, I)) along a path (SiT ``transport/path.py``:
``ICPlan`` linear, ``GVPCPlan`` = REPA's ``cosine``, ``VPCPlan``). Each system measures t its own
way: ``data_at=1`` (SiT, LightningDiT: t = 0 is noise) or ``data_at=0`` (REPA, our flow: t = 1 is
noise); the network sees ``t * time_scale`` and, for velocity models, predicts ``dx_t/dt`` in
that time. Internally the paths are written in SiT's data time tau (``tau = t`` or ``1 - t``) and
``nu = 1 - tau``; own-time derivatives carry the sign ``d tau / dt``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from common.diffusion.likelihood import mean_flat
from common.errors import require_choice

PATHS = ("linear", "gvp", "vp")
PREDICTIONS = ("velocity", "score", "noise")
TIME_SAMPLINGS = ("uniform", "logit_normal", "lognormal")
LOSS_WEIGHTS = (None, "velocity", "likelihood")

# Named settings of each system (its own time direction, what its network sees, its training t).
PRESETS: dict[str, dict] = {
    "sit": dict(data_at=1, time_scale=1.0, time_sampling="uniform"),
    "repa": dict(data_at=0, time_scale=1.0, time_sampling="uniform"),
    "lightningdit": dict(
        data_at=1, time_scale=1.0, time_sampling="logit_normal", cosine_weight=1.0, shift=1 / 0.3
    ),
    "rectified_flow": dict(data_at=0, time_scale=1000.0, time_sampling="logit_normal"),
}


def _column(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.view(-1, *([1] * (like.ndim - 1))).to(like.dtype)


class Transport:
    """Paths, conventions and training losses of one flow-matching system.

    ``train_eps``/``sample_eps`` default as SiT's ``create_transport``: 1e-5/1e-3 for ``vp``,
    1e-3 for score or noise models on ``linear``/``gvp``, else 0. ``shift`` is SD3's timestep shift
    (> 1 spends more steps near noise) whatever the direction of t: LightningDiT's
    ``timestep_shift=0.3`` (data time) is ``shift=1/0.3``. ``cosine_weight`` adds LightningDiT's
    velocity-direction term ``1 - cos(v_theta, v)`` (over channels).
    """

    def __init__(
        self,
        path: str = "linear",
        prediction: str = "velocity",
        data_at: int = 0,
        time_scale: float = 1.0,
        time_sampling: str = "uniform",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        loss_weight: str | None = None,
        cosine_weight: float = 0.0,
        train_eps: float | None = None,
        sample_eps: float | None = None,
        shift: float = 1.0,
        vp_sigmas: tuple[float, float] = (0.1, 20.0),
    ) -> None:
        self.path = require_choice("path", path, PATHS)
        self.prediction = require_choice("prediction", prediction, PREDICTIONS)
        self.data_at = require_choice("data_at", data_at, (0, 1))
        self.time_sampling = require_choice("time_sampling", time_sampling, TIME_SAMPLINGS)
        self.loss_weight = require_choice("loss_weight", loss_weight, LOSS_WEIGHTS)
        if time_sampling == "lognormal" and path == "vp":
            raise ValueError(
                "time_sampling='lognormal' (REPA's) needs the linear or gvp path; use uniform"
            )
        if cosine_weight and prediction != "velocity":
            raise ValueError(
                "cosine_weight compares velocities; set prediction='velocity' or cosine_weight=0"
            )
        if not shift > 0:
            raise ValueError(f"shift={shift} must be positive; pass 1 for no timestep shift")
        default = 1e-3 if path == "vp" or prediction != "velocity" else 0.0
        self.train_eps = (1e-5 if path == "vp" else default) if train_eps is None else train_eps
        self.sample_eps = default if sample_eps is None else sample_eps
        self.time_scale = time_scale
        self.logit_mean, self.logit_std = logit_mean, logit_std
        self.cosine_weight = cosine_weight
        self.shift = shift
        self.vp_sigmas = vp_sigmas
        self.sign = 1.0 if data_at == 1 else -1.0  # d tau / dt

    @classmethod
    def from_preset(cls, name: str, **overrides) -> Transport:
        """``PRESETS[name]`` with ``overrides`` (e.g. ``path="gvp"``, REPA's ``cosine``)."""
        require_choice("preset", name, PRESETS)
        return cls(**{**PRESETS[name], **overrides})

    # ------------------------------------------------------------------ paths
    def data_time(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """SiT's time ``tau`` (1 = data) and ``nu = 1 - tau``, each without a double subtraction."""
        return (t, 1 - t) if self.data_at == 1 else (1 - t, t)

    def _vp_log_mean(self, nu):
        lo, hi = self.vp_sigmas
        return -0.25 * nu**2 * (hi - lo) - 0.5 * nu * lo, 0.5 * nu * (hi - lo) + 0.5 * lo

    def tau_coefficients(self, t: torch.Tensor):
        """``alpha, sigma, d alpha/d tau, d sigma/d tau`` (SiT ``compute_alpha_t``/``_sigma_t``)."""
        tau, nu = self.data_time(t)
        if self.path == "linear":
            return tau, nu, 1.0, -1.0
        if self.path == "gvp":
            a = torch.sin(tau * math.pi / 2)
            s = torch.cos(tau * math.pi / 2)
            return a, s, math.pi / 2 * s, -math.pi / 2 * a
        log_mean, d_log_mean = self._vp_log_mean(nu)
        a = torch.exp(log_mean)
        s = torch.sqrt(1 - torch.exp(2 * log_mean))
        return a, s, a * d_log_mean, torch.exp(2 * log_mean) * d_log_mean / -s

    def coefficients(self, t: torch.Tensor, like: torch.Tensor):
        """``alpha_t, sigma_t`` and their derivatives in own time, shaped like ``like``."""
        a, s, da, ds = self.tau_coefficients(_column(t, like))
        return a, s, self.sign * da, self.sign * ds

    def _alpha_ratio(self, t: torch.Tensor) -> torch.Tensor:
        """``(d alpha/d tau) / alpha``, SiT's stable forms (``compute_d_alpha_alpha_ratio_t``)."""
        tau, nu = self.data_time(t)
        if self.path == "linear":
            return 1 / tau
        if self.path == "gvp":
            return math.pi / (2 * torch.tan(tau * math.pi / 2))
        return self._vp_log_mean(nu)[1]

    def drift_var(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """SiT ``compute_drift``'s ``(alpha'/alpha) sigma^2 - sigma sigma'`` (tau time)."""
        t = _column(t, like)
        _, s, _, ds = self.tau_coefficients(t)
        return self._alpha_ratio(t) * s**2 - s * ds

    # ------------------------------------------------------------------ conversions
    def score_from_velocity(self, v, x, t):
        """SiT ``get_score_from_velocity`` (REPA's too), in own time."""
        a, s, da, ds = self.coefficients(t, x)
        ratio = a / da
        return (ratio * v - x) / (s**2 - ratio * ds * s)

    def velocity_from_score(self, score, x, t):
        """SiT ``get_velocity_from_score``: ``v = var * score + (alpha'/alpha) x`` (own time)."""
        tau_v = self.drift_var(t, x) * score + self._alpha_ratio(_column(t, x)) * x
        return self.sign * tau_v

    def velocity_and_score(self, out, x, t):
        """Own-time velocity and score of ``x_t`` from a model output of ``self.prediction``."""
        if self.prediction == "velocity":
            return out, self.score_from_velocity(out, x, t)
        score = out if self.prediction == "score" else -out / self.coefficients(t, x)[1]
        return self.velocity_from_score(score, x, t), score

    # ------------------------------------------------------------------ intervals and grids
    def interval(self, sample: bool = True, last_step_size: float = 0.0) -> tuple[float, float]:
        """(noise end, data end) in own time: SiT ``check_interval`` (eps, SDE last step)."""
        eps = self.sample_eps if sample else self.train_eps
        noise_margin = 0.0 if self.path == "vp" else eps
        data_margin = last_step_size or eps
        if self.data_at == 1:
            return noise_margin, 1 - data_margin
        return 1 - noise_margin, data_margin

    def time_grid(self, num_steps: int, device=None, last_step_size: float = 0.0) -> torch.Tensor:
        """``num_steps + 1`` float32 times from the noise end to the data end, shifted (SD3)."""
        start, stop = self.interval(True, last_step_size)
        t = torch.linspace(start, stop, num_steps + 1, device=device, dtype=torch.float64)
        if self.shift != 1.0:
            k = self.shift if self.data_at == 0 else 1 / self.shift
            t = k * t / (1 + (k - 1) * t)
        return t.float()

    def sample_timesteps(self, n: int, device, generator: torch.Generator | None = None):
        """Training t: uniform or logit-normal on the train interval, or REPA's ``lognormal``."""
        if self.time_sampling == "lognormal":
            sigma = torch.exp(
                self.logit_mean
                + self.logit_std * torch.randn(n, device=device, generator=generator)
            )
            nu = sigma / (1 + sigma) if self.path == "linear" else 2 / math.pi * torch.atan(sigma)
            return nu if self.data_at == 0 else 1 - nu
        if self.time_sampling == "uniform":
            u = torch.rand(n, device=device, generator=generator)
        else:
            u = torch.sigmoid(
                self.logit_mean
                + self.logit_std * torch.randn(n, device=device, generator=generator)
            )
        lo, hi = sorted(self.interval(sample=False))
        return u * (hi - lo) + lo

    # ------------------------------------------------------------------ network and losses
    def network(self, model, x: torch.Tensor, t: torch.Tensor, model_kwargs=None):
        """``model(x, t * time_scale)``: the prediction (first ``C`` channels), extra outputs."""
        out = model(x, t * self.time_scale, **(model_kwargs or {}))
        extra = None
        if isinstance(out, tuple):
            out, extra = out[0], out[1]
        channels = x.shape[1]
        if out.shape[1] not in (channels, 2 * channels):
            raise ValueError(
                f"model output has {out.shape[1]} channels for {channels}-channel inputs; "
                "use a model that predicts one value per channel (plus ignored learned-sigma ones)"
            )
        return out[:, :channels], extra

    def training_losses(self, model, x, t=None, model_kwargs=None, noise=None, zs=None) -> dict:
        """Per-sample terms: ``mse`` (SiT's weighted loss), ``cos`` when ``cosine_weight``, ``loss``
        = mse + cosine_weight * cos, and ``proj`` (REPA, not in ``loss``) when encoder features
        ``zs`` are given and the model returns ``(out, zs_tilde)``. SiT ``training_losses``,
        REPA ``SILoss``, LightningDiT's cosine term."""
        if t is None:
            t = self.sample_timesteps(x.shape[0], x.device)
        if noise is None:
            noise = torch.randn_like(x)
        a, s, da, ds = self.coefficients(t, x)
        x_t = a * x + s * noise
        out, zs_tilde = self.network(model, x_t, t, model_kwargs)
        terms = {}
        if self.prediction == "velocity":
            target = da * x + ds * noise
            mse = mean_flat((out - target) ** 2)
        else:
            weight = 1.0
            if self.loss_weight is not None:
                var = self.drift_var(t, x)
                weight = (var / s) ** 2 if self.loss_weight == "velocity" else var / s**2
            error = out - noise if self.prediction == "noise" else out * s + noise
            mse = mean_flat(weight * error**2)
        terms["mse"] = mse
        terms["loss"] = mse
        if self.cosine_weight:
            terms["cos"] = mean_flat(1 - F.cosine_similarity(out, target, dim=1))
            terms["loss"] = mse + self.cosine_weight * terms["cos"]
        if zs is not None:
            terms["proj"] = projection_loss(zs, zs_tilde)
        return terms


def projection_loss(
    zs: Sequence[torch.Tensor], zs_tilde: Sequence[torch.Tensor] | None
) -> torch.Tensor:
    """REPA's alignment (``SILoss``): per sample, the mean over encoders and tokens of
    ``-cos(z, z_tilde)``; its batch mean is REPA's ``proj_loss`` (the caller weighs it).
    ``zs_tilde``: the model's projections (None: it returned none)."""
    if zs_tilde is None:
        raise ValueError(
            "encoder features zs were given but the model returned no projections; "
            "build the model with REPA projectors or drop zs"
        )
    if len(zs) != len(zs_tilde):
        raise ValueError(
            f"{len(zs)} encoder features for {len(zs_tilde)} projections; pass one per projector"
        )
    terms = [
        -(F.normalize(z, dim=-1) * F.normalize(z_tilde, dim=-1)).sum(-1).mean(-1)
        for z, z_tilde in zip(zs, zs_tilde, strict=True)
    ]
    return torch.stack(terms).mean(0)
