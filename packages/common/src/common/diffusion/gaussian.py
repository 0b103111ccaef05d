"""Gaussian diffusion (DDPM) as used by DiT and G.pt: thesis Sec. 2.3.1 and 2.4.

Forward process ``q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)``; reverse process
``p(x_{t-1} | x_t) = N(mu_theta, Sigma_theta)``. The mean is trained with
``L_simple = ||eps_theta(x_t) - eps||^2`` and, when the covariance is learned, ``Sigma_theta``
with the full variational bound on a stop-gradient mean (the hybrid objective of Nichol & Dhariwal
that DiT keeps). The API and the numbers follow ADM (guided-diffusion) and DiT: the schedule is
built in float64 and each constant is cast to float32 after it is indexed by ``t``.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterator

import numpy as np
import torch

from common.diffusion.likelihood import discretized_gaussian_log_likelihood, mean_flat, normal_kl
from common.diffusion.progress import with_progress
from common.diffusion.transport import projection_loss


class ModelMeanType(enum.Enum):
    """What the network predicts."""

    EPSILON = "epsilon"  # the noise (DiT)
    START_X = "x0"  # the clean signal (G.pt, Sec. 3.2.2)
    VELOCITY = "v"  # v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho)


class ModelVarType(enum.Enum):
    """Covariance of the reverse process."""

    FIXED_SMALL = "fixed_small"  # posterior variance beta~_t
    FIXED_LARGE = "fixed_large"  # beta_t
    LEARNED = "learned"  # network outputs log-variance directly
    LEARNED_RANGE = "learned_range"  # network interpolates log beta~_t .. log beta_t (DiT)


class LossType(enum.Enum):
    MSE = "mse"  # L_simple, plus the VLB on the variance when it is learned (hybrid)
    RESCALED_MSE = "rescaled_mse"  # as MSE with the VLB term scaled by T / 1000
    KL = "kl"  # the variational bound alone
    RESCALED_KL = "rescaled_kl"  # the variational bound times T

    def is_vb(self) -> bool:
        return self in (LossType.KL, LossType.RESCALED_KL)


def get_named_beta_schedule(name: str, num_diffusion_timesteps: int) -> np.ndarray:
    """Beta schedules in float64.

    ``linear``: Ho et al.'s 1e-4 .. 2e-2 for T = 1000, rescaled by 1000 / T for other lengths (the
    DiT setting, Sec. 2.4). ``cosine``: Nichol & Dhariwal's
    ``abar(t) = cos^2((t + s) / (1 + s) pi/2)`` with s = 0.008 and betas capped at 0.999.
    """
    if name == "linear":
        scale = 1000 / num_diffusion_timesteps
        return np.linspace(scale * 0.0001, scale * 0.02, num_diffusion_timesteps, dtype=np.float64)
    if name in ("cosine", "squaredcos_cap_v2"):
        return betas_for_alpha_bar(
            num_diffusion_timesteps,
            lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2,
        )
    raise ValueError(f"unknown noise schedule {name!r}: use 'linear' or 'cosine'")


def betas_for_alpha_bar(
    num_diffusion_timesteps: int, alpha_bar: Callable[[float], float], max_beta: float = 0.999
) -> np.ndarray:
    """Discretise a continuous ``abar(t)``, t in [0, 1], into betas."""
    betas = []
    for i in range(num_diffusion_timesteps):
        t1, t2 = i / num_diffusion_timesteps, (i + 1) / num_diffusion_timesteps
        betas.append(min(1 - alpha_bar(t2) / alpha_bar(t1), max_beta))
    return np.array(betas, dtype=np.float64)


def _last(iterable):
    """Last item of an iterator, keeping no other item alive (sampling loops yield every step)."""
    item = None
    for item in iterable:  # noqa: B007
        pass
    return item


def _broadcast(values: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """Gather per-timestep float64 constants at ``t``, cast to float32, shape ``[N, 1, ...]``."""
    return values[t].float().view(-1, *([1] * (ndim - 1)))


class GaussianDiffusion:
    """Utilities to train and sample a diffusion model over ``num_timesteps`` steps.

    :param betas: 1-D float64 array of betas, step 0 first.
    """

    def __init__(
        self,
        *,
        betas: np.ndarray,
        model_mean_type: ModelMeanType,
        model_var_type: ModelVarType,
        loss_type: LossType,
    ) -> None:
        self.model_mean_type = model_mean_type
        self.model_var_type = model_var_type
        self.loss_type = loss_type
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0).all() and (betas <= 1).all()):
            raise ValueError("betas must be a 1-D array with values in (0, 1]")
        self.num_timesteps = int(betas.shape[0])

        alphas = 1.0 - betas
        acp = np.cumprod(alphas)
        acp_prev = np.append(1.0, acp[:-1])
        posterior_variance = betas * (1.0 - acp_prev) / (1.0 - acp)
        # The posterior variance is 0 at t = 0: clip its log to the value at t = 1.
        if self.num_timesteps > 1:
            posterior_log_var = np.log(np.append(posterior_variance[1], posterior_variance[1:]))
            large_var = np.append(posterior_variance[1], betas[1:])
        else:  # a single step: no posterior to speak of, use beta itself
            posterior_log_var = np.log(betas)
            large_var = betas
        self._np = {
            "betas": betas,
            "log_betas": np.log(betas),
            "alphas_cumprod": acp,
            "alphas_cumprod_prev": acp_prev,
            "alphas_cumprod_next": np.append(acp[1:], 0.0),
            "sqrt_alphas_cumprod": np.sqrt(acp),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - acp),
            "log_one_minus_alphas_cumprod": np.log(1.0 - acp),
            "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / acp),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / acp - 1),
            "posterior_variance": posterior_variance,
            "posterior_log_variance_clipped": posterior_log_var,
            "posterior_mean_coef1": betas * np.sqrt(acp_prev) / (1.0 - acp),
            "posterior_mean_coef2": (1.0 - acp_prev) * np.sqrt(alphas) / (1.0 - acp),
            "fixed_large_variance": large_var,
            "fixed_large_log_variance": np.log(large_var),
        }
        self._device_cache: dict[torch.device, dict[str, torch.Tensor]] = {}
        for name, value in self._np.items():
            setattr(self, name, value)

    # ------------------------------------------------------------------ constants on device
    def _c(self, name: str, t: torch.Tensor, ndim: int) -> torch.Tensor:
        table = self._device_cache.get(t.device)
        if table is None:
            table = {k: torch.from_numpy(v).to(t.device) for k, v in self._np.items()}
            self._device_cache[t.device] = table
        return _broadcast(table[name], t, ndim)

    # ------------------------------------------------------------------ forward process
    def q_mean_variance(self, x_start: torch.Tensor, t: torch.Tensor):
        """Mean, variance and log-variance of ``q(x_t | x_0)``."""
        n = x_start.ndim
        mean = self._c("sqrt_alphas_cumprod", t, n) * x_start
        variance = (1.0 - self._c("alphas_cumprod", t, n)).expand_as(x_start)
        log_variance = self._c("log_one_minus_alphas_cumprod", t, n).expand_as(x_start)
        return mean, variance, log_variance

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None):
        """Sample ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` (Sec. 2.3.1)."""
        if noise is None:
            noise = torch.randn_like(x_start)
        if noise.shape != x_start.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} != x_start {tuple(x_start.shape)}")
        n = x_start.ndim
        return (
            self._c("sqrt_alphas_cumprod", t, n) * x_start
            + self._c("sqrt_one_minus_alphas_cumprod", t, n) * noise
        )

    def q_posterior_mean_variance(self, x_start, x_t, t):
        """Mean, variance and clipped log-variance of ``q(x_{t-1} | x_t, x_0)``."""
        n = x_t.ndim
        mean = (
            self._c("posterior_mean_coef1", t, n) * x_start
            + self._c("posterior_mean_coef2", t, n) * x_t
        )
        variance = self._c("posterior_variance", t, n).expand_as(x_t)
        log_variance = self._c("posterior_log_variance_clipped", t, n).expand_as(x_t)
        return mean, variance, log_variance

    # ------------------------------------------------------------------ parameterisations
    def _predict_xstart_from_eps(self, x_t, t, eps):
        n = x_t.ndim
        return (
            self._c("sqrt_recip_alphas_cumprod", t, n) * x_t
            - self._c("sqrt_recipm1_alphas_cumprod", t, n) * eps
        )

    def _predict_eps_from_xstart(self, x_t, t, pred_xstart):
        n = x_t.ndim
        return (self._c("sqrt_recip_alphas_cumprod", t, n) * x_t - pred_xstart) / self._c(
            "sqrt_recipm1_alphas_cumprod", t, n
        )

    def _predict_xstart_from_v(self, x_t, t, v):
        n = x_t.ndim
        return (
            self._c("sqrt_alphas_cumprod", t, n) * x_t
            - self._c("sqrt_one_minus_alphas_cumprod", t, n) * v
        )

    def get_v(self, x_start, noise, t):
        """Velocity target ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0``."""
        n = x_start.ndim
        return (
            self._c("sqrt_alphas_cumprod", t, n) * noise
            - self._c("sqrt_one_minus_alphas_cumprod", t, n) * x_start
        )

    # ------------------------------------------------------------------ reverse process
    def _split_output(self, model_output: torch.Tensor, x: torch.Tensor):
        """Split a learned-variance output ``[N, 2C, ...]`` into prediction and variance values."""
        learned = self.model_var_type in (ModelVarType.LEARNED, ModelVarType.LEARNED_RANGE)
        channels = x.shape[1]
        expected = channels * (2 if learned else 1)
        if model_output.shape[1] != expected or model_output.shape[2:] != x.shape[2:]:
            raise ValueError(
                f"model output has shape {tuple(model_output.shape)} but the diffusion expects "
                f"{expected} channels for inputs of shape {tuple(x.shape)} "
                f"(learn_sigma={learned}); set learn_sigma to match the model"
            )
        if learned:
            return torch.split(model_output, channels, dim=1)
        return model_output, None

    def p_mean_variance(
        self, model, x, t, clip_denoised=True, denoised_fn=None, model_kwargs=None
    ) -> dict:
        """Apply the model to get ``p(x_{t-1} | x_t)`` and the implied prediction of ``x_0``."""
        model_kwargs = {} if model_kwargs is None else model_kwargs
        model_output = model(x, t, **model_kwargs)
        extra = None
        if isinstance(model_output, tuple):
            model_output, extra = model_output
        model_output, var_values = self._split_output(model_output, x)
        n = x.ndim
        if self.model_var_type == ModelVarType.LEARNED:
            model_log_variance = var_values
            model_variance = torch.exp(model_log_variance)
        elif self.model_var_type == ModelVarType.LEARNED_RANGE:
            min_log = self._c("posterior_log_variance_clipped", t, n)
            max_log = self._c("log_betas", t, n)
            frac = (var_values + 1) / 2  # [-1, 1] -> [min_var, max_var]
            model_log_variance = frac * max_log + (1 - frac) * min_log
            model_variance = torch.exp(model_log_variance)
        elif self.model_var_type == ModelVarType.FIXED_LARGE:
            model_variance = self._c("fixed_large_variance", t, n).expand_as(x)
            model_log_variance = self._c("fixed_large_log_variance", t, n).expand_as(x)
        else:
            model_variance = self._c("posterior_variance", t, n).expand_as(x)
            model_log_variance = self._c("posterior_log_variance_clipped", t, n).expand_as(x)

        if self.model_mean_type == ModelMeanType.START_X:
            pred_xstart = model_output
        elif self.model_mean_type == ModelMeanType.VELOCITY:
            pred_xstart = self._predict_xstart_from_v(x, t, model_output)
        else:
            pred_xstart = self._predict_xstart_from_eps(x, t, model_output)
        if denoised_fn is not None:
            pred_xstart = denoised_fn(pred_xstart)
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        model_mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        return {
            "mean": model_mean,
            "variance": model_variance,
            "log_variance": model_log_variance,
            "pred_xstart": pred_xstart,
            "extra": extra,
        }

    def condition_mean(self, cond_fn, p_mean_var, x, t, model_kwargs=None):
        """Classifier guidance on the mean (Sohl-Dickstein et al.): mu + Sigma * grad log p(y|x)."""
        gradient = cond_fn(x, t, **(model_kwargs or {}))
        return p_mean_var["mean"].float() + p_mean_var["variance"] * gradient.float()

    def condition_score(self, cond_fn, p_mean_var, x, t, model_kwargs=None):
        """Classifier guidance on the score (Song et al.), used by DDIM."""
        alpha_bar = self._c("alphas_cumprod", t, x.ndim)
        eps = self._predict_eps_from_xstart(x, t, p_mean_var["pred_xstart"])
        eps = eps - (1 - alpha_bar).sqrt() * cond_fn(x, t, **(model_kwargs or {}))
        out = dict(p_mean_var)
        out["pred_xstart"] = self._predict_xstart_from_eps(x, t, eps)
        out["mean"], _, _ = self.q_posterior_mean_variance(out["pred_xstart"], x, t)
        return out

    @staticmethod
    def _noise_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if generator is None:
            return torch.randn_like(x)
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)

    def p_sample(
        self,
        model,
        x,
        t,
        clip_denoised=True,
        denoised_fn=None,
        cond_fn=None,
        model_kwargs=None,
        generator: torch.Generator | None = None,
    ) -> dict:
        """Ancestral step ``x_{t-1} ~ p(x_{t-1} | x_t)``; no noise is added at t = 0."""
        out = self.p_mean_variance(model, x, t, clip_denoised, denoised_fn, model_kwargs)
        noise = self._noise_like(x, generator)
        nonzero_mask = (t != 0).float().view(-1, *([1] * (x.ndim - 1)))
        if cond_fn is not None:
            out["mean"] = self.condition_mean(cond_fn, out, x, t, model_kwargs)
        sample = out["mean"] + nonzero_mask * torch.exp(0.5 * out["log_variance"]) * noise
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def _loop(self, step, shape, noise, device, progress, model, generator) -> Iterator[dict]:
        if device is None:
            if noise is not None:
                device = noise.device
            elif hasattr(model, "parameters"):
                device = next(model.parameters()).device
            else:
                raise ValueError("pass device= (or noise=) when the model is a plain function")
        if not isinstance(shape, (tuple, list)):
            raise TypeError(f"shape must be a tuple or list, got {type(shape).__name__}")
        if noise is not None:
            img = noise
        elif generator is not None:
            img = torch.randn(*shape, generator=generator, device=device)
        else:
            img = torch.randn(*shape, device=device)
        indices = list(range(self.num_timesteps))[::-1]
        for i in with_progress(indices, progress, "sampling"):
            t = torch.full((shape[0],), i, device=device, dtype=torch.long)
            with torch.no_grad():
                out = step(img, t)
            yield out
            img = out["sample"]

    def p_sample_loop(self, *args, **kwargs) -> torch.Tensor:
        """Sample ``x_0`` by ancestral sampling from ``x_T ~ N(0, I)`` (``noise`` if given); the
        arguments of :meth:`p_sample_loop_progressive` (ADM's ``p_sample_loop``)."""
        return _last(self.p_sample_loop_progressive(*args, **kwargs))["sample"]

    def p_sample_loop_progressive(
        self,
        model,
        shape,
        noise=None,
        clip_denoised=True,
        denoised_fn=None,
        cond_fn=None,
        model_kwargs=None,
        device=None,
        progress=False,
        generator: torch.Generator | None = None,
    ) -> Iterator[dict]:
        """Yield the output of every ``p_sample`` step, from t = T - 1 down to 0."""

        def step(img, t):
            return self.p_sample(
                model, img, t, clip_denoised, denoised_fn, cond_fn, model_kwargs, generator
            )

        yield from self._loop(step, shape, noise, device, progress, model, generator)

    def ddim_sample(
        self,
        model,
        x,
        t,
        clip_denoised=True,
        denoised_fn=None,
        cond_fn=None,
        model_kwargs=None,
        eta=0.0,
        generator: torch.Generator | None = None,
    ) -> dict:
        """DDIM step (Song et al., Eq. 12); deterministic when ``eta == 0``."""
        out = self.p_mean_variance(model, x, t, clip_denoised, denoised_fn, model_kwargs)
        if cond_fn is not None:
            out = self.condition_score(cond_fn, out, x, t, model_kwargs)
        eps = self._predict_eps_from_xstart(x, t, out["pred_xstart"])
        alpha_bar = self._c("alphas_cumprod", t, x.ndim)
        alpha_bar_prev = self._c("alphas_cumprod_prev", t, x.ndim)
        sigma = (
            eta
            * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar))
            * torch.sqrt(1 - alpha_bar / alpha_bar_prev)
        )
        mean_pred = (
            out["pred_xstart"] * torch.sqrt(alpha_bar_prev)
            + torch.sqrt(1 - alpha_bar_prev - sigma**2) * eps
        )
        sample = mean_pred
        if eta > 0:
            nonzero_mask = (t != 0).float().view(-1, *([1] * (x.ndim - 1)))
            sample = sample + nonzero_mask * sigma * self._noise_like(x, generator)
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def ddim_reverse_sample(
        self, model, x, t, clip_denoised=True, denoised_fn=None, model_kwargs=None
    ) -> dict:
        """Deterministic DDIM step from ``x_t`` to ``x_{t+1}`` (encoding an image into noise)."""
        out = self.p_mean_variance(model, x, t, clip_denoised, denoised_fn, model_kwargs)
        eps = self._predict_eps_from_xstart(x, t, out["pred_xstart"])
        alpha_bar_next = self._c("alphas_cumprod_next", t, x.ndim)
        mean_pred = (
            out["pred_xstart"] * torch.sqrt(alpha_bar_next) + torch.sqrt(1 - alpha_bar_next) * eps
        )
        return {"sample": mean_pred, "pred_xstart": out["pred_xstart"]}

    def ddim_sample_loop(self, *args, **kwargs) -> torch.Tensor:
        """Sample with DDIM over this diffusion's (usually respaced) timesteps; the arguments of
        :meth:`ddim_sample_loop_progressive` (ADM's ``ddim_sample_loop``)."""
        return _last(self.ddim_sample_loop_progressive(*args, **kwargs))["sample"]

    def ddim_sample_loop_progressive(
        self,
        model,
        shape,
        noise=None,
        clip_denoised=True,
        denoised_fn=None,
        cond_fn=None,
        model_kwargs=None,
        device=None,
        progress=False,
        eta=0.0,
        generator: torch.Generator | None = None,
    ) -> Iterator[dict]:
        def step(img, t):
            return self.ddim_sample(
                model, img, t, clip_denoised, denoised_fn, cond_fn, model_kwargs, eta, generator
            )

        yield from self._loop(step, shape, noise, device, progress, model, generator)

    # ------------------------------------------------------------------ training
    def sample_timesteps(self, n: int, device, generator: torch.Generator | None = None):
        """Uniform training timesteps in ``[0, num_timesteps)``."""
        return torch.randint(0, self.num_timesteps, (n,), device=device, generator=generator)

    def _vb_terms_bpd(self, model, x_start, x_t, t, clip_denoised=True, model_kwargs=None):
        """One term of the variational bound in bits per dimension.

        ``KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))`` for t > 0 and the decoder NLL
        ``-log p(x_0 | x_1)`` at t = 0 (Sec. 2.3.1).
        """
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self.p_mean_variance(model, x_t, t, clip_denoised, model_kwargs=model_kwargs)
        kl = normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"])
        kl = mean_flat(kl) / math.log(2.0)
        decoder_nll = -discretized_gaussian_log_likelihood(
            x_start, means=out["mean"], log_scales=0.5 * out["log_variance"]
        )
        decoder_nll = mean_flat(decoder_nll) / math.log(2.0)
        return {"output": torch.where(t == 0, decoder_nll, kl), "pred_xstart": out["pred_xstart"]}

    def training_losses(self, model, x_start, t, model_kwargs=None, noise=None, zs=None) -> dict:
        """Per-sample losses at timesteps ``t``: ``loss``, ``mse`` and ``vb`` (learned variance).

        With ``LossType.MSE`` and a learned variance this is the hybrid objective of Sec. 2.3.1:
        ``L_simple`` trains the mean and the VLB term, computed on a detached mean, trains only the
        variance. Given encoder features ``zs`` and a model that returns ``(out, projections)``,
        also REPA's ``proj`` term (``transport.projection_loss``, not in ``loss``), so that the
        thesis recipe can take REPA alone (docs/modern_digits).
        """
        model_kwargs = {} if model_kwargs is None else model_kwargs
        if noise is None:
            noise = torch.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise=noise)
        terms = {}
        if self.loss_type.is_vb():
            terms["loss"] = self._vb_terms_bpd(
                model, x_start, x_t, t, clip_denoised=False, model_kwargs=model_kwargs
            )["output"]
            if self.loss_type == LossType.RESCALED_KL:
                terms["loss"] = terms["loss"] * self.num_timesteps
            return terms

        model_output, zs_tilde = model(x_t, t, **model_kwargs), None
        if isinstance(model_output, tuple):
            model_output, zs_tilde = model_output
        if zs is not None:
            terms["proj"] = projection_loss(zs, zs_tilde)
        prediction, var_values = self._split_output(model_output, x_t)
        if var_values is not None:
            frozen_out = torch.cat([prediction.detach(), var_values], dim=1)
            terms["vb"] = self._vb_terms_bpd(
                lambda *args, r=frozen_out: r, x_start, x_t, t, clip_denoised=False
            )["output"]
            if self.loss_type == LossType.RESCALED_MSE:
                terms["vb"] = terms["vb"] * (self.num_timesteps / 1000.0)
        if self.model_mean_type == ModelMeanType.START_X:
            target = x_start
        elif self.model_mean_type == ModelMeanType.VELOCITY:
            target = self.get_v(x_start, noise, t)
        else:
            target = noise
        terms["mse"] = mean_flat((target - prediction) ** 2)
        terms["loss"] = terms["mse"] + terms["vb"] if "vb" in terms else terms["mse"]
        return terms

    def _prior_bpd(self, x_start: torch.Tensor) -> torch.Tensor:
        """KL(q(x_T | x_0) || N(0, I)) in bits per dimension: the bound's constant prior term."""
        t = torch.full((x_start.shape[0],), self.num_timesteps - 1, device=x_start.device)
        mean, _, log_variance = self.q_mean_variance(x_start, t)
        return mean_flat(normal_kl(mean, log_variance, 0.0, 0.0)) / math.log(2.0)
