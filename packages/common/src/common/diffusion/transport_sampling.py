"""Samplers of a ``Transport``: fixed-step and ``torchdiffeq`` ODEs, SDEs, guidance intervals.

Every sampler runs from the noise end to the data end in the transport's own time. ``num_steps``
counts integration steps (intervals) for ODEs, as REPA's ``euler_sampler`` and our flow do; SiT's
``sample_ode`` and LightningDiT's ``num_steps`` count grid points (pass one less here). For SDEs
it counts grid points as SiT's ``sample_sde`` and REPA's ``euler_maruyama_sampler`` both do:
``num_steps - 1`` stochastic steps, then the last step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torchdiffeq import odeint

from common.diffusion.gaussian import _last
from common.diffusion.guidance import Guidance
from common.diffusion.progress import Progress, with_progress
from common.diffusion.transport import Transport
from common.errors import require_choice, require_positive_int

DIFFUSION_FORMS = ("constant", "sbdm", "sigma", "linear", "decreasing", "increasing-decreasing")
LAST_STEPS = (None, "mean", "tweedie", "euler")
NoiseSource = Callable[[torch.Size], torch.Tensor] | torch.Generator | None


class _Field:
    """The model as the samplers see it: own-time velocity (and score) at ``x``, guided or not."""

    def __init__(self, transport: Transport, model, model_kwargs, guidance: Guidance | None):
        self.transport, self.model, self.guidance = transport, model, guidance
        self.kwargs = dict(model_kwargs or {})

    def output(self, x: torch.Tensor, t: float, guide_at: float | None = None) -> torch.Tensor:
        """The prediction at ``x``; guided when ``guide_at`` (default ``t``) is in the interval."""
        batch_t = torch.full((x.shape[0],), float(t), device=x.device)
        if self.guidance is None or self.guidance.scale == 1.0:
            return self.transport.network(self.model, x, batch_t, self.kwargs)[0]
        active = self.guidance.active(float(t if guide_at is None else guide_at))
        return self.guided_pair(x, batch_t, active)[0]

    def guided_pair(self, x: torch.Tensor, batch_t: torch.Tensor, active: bool):
        """``Guidance.pair`` on the transport's prediction (first C channels)."""
        kwargs = dict(self.kwargs)
        if "y" not in kwargs:
            raise ValueError("guidance needs the class labels; pass model_kwargs={'y': labels}")
        y = kwargs.pop("y")

        def network(x2, t2, y2):
            return self.transport.network(self.model, x2, t2, {**kwargs, "y": y2})[0]

        return self.guidance.pair(network, x, batch_t, y, active)

    def doubled_velocity(self, t: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """SiT ``sample.py``'s ODE state ``[x; x']`` under ``forward_with_cfg``: both halves run
        the model at ``x`` and the twin rows evolve too; adaptive solvers measure their error
        over all of it, so their steps (and samples) depend on it."""
        x = state[: state.shape[0] // 2]
        batch_t = torch.full((x.shape[0],), float(t), device=x.device)
        out = torch.cat(self.guided_pair(x, batch_t, self.guidance.active(float(t))))
        if self.transport.prediction == "velocity":
            return out
        return self.transport.velocity_and_score(out, state, self._column(state, t))[0]

    def velocity(self, x, t, guide_at=None) -> torch.Tensor:
        out = self.output(x, t, guide_at)
        if self.transport.prediction == "velocity":
            return out
        return self.transport.velocity_and_score(out, x, self._column(x, t))[0]

    def velocity_and_score(self, x, t, guide_at=None):
        return self.transport.velocity_and_score(self.output(x, t, guide_at), x, self._column(x, t))

    @staticmethod
    def _column(x, t) -> torch.Tensor:
        return torch.full((x.shape[0],), float(t), device=x.device, dtype=x.dtype)


def ode_states(
    transport: Transport,
    model,
    noise: torch.Tensor,
    method: str = "euler",
    num_steps: int = 50,
    model_kwargs=None,
    guidance: Guidance | None = None,
    atol: float = 1e-6,
    rtol: float = 1e-3,
    progress: Progress = False,
) -> Iterator[torch.Tensor]:
    """Yield the state at each grid time after the first. ``euler``; ``heun`` (REPA's and our
    flow's: Euler on the last step); any other ``torchdiffeq.odeint`` method (SiT ``sample_ode``:
    ``dopri5`` with ``atol``/``rtol``, ``heun2`` = Heun on every step, ``euler``...), which with
    guidance integrates SiT's doubled batch (``_Field.doubled_velocity``)."""
    field = _Field(transport, model, model_kwargs, guidance)
    ts = transport.time_grid(require_positive_int("num_steps", num_steps), noise.device)
    x = noise
    with torch.no_grad():
        if method not in ("euler", "heun"):
            doubled = guidance is not None and guidance.scale != 1.0
            f = field.doubled_velocity if doubled else (lambda t, y: field.velocity(y, t))
            state = torch.cat([x, x]) if doubled else x
            # One-element tolerances, as SiT passes them: the error test then runs in float64.
            states = odeint(f, state, ts, method=method, atol=[atol], rtol=[rtol])
            for state in states[1:]:
                yield state[: x.shape[0]]
            return
        for i in with_progress(range(num_steps), progress, f"transport-{method}"):
            t_cur, t_next = ts[i], ts[i + 1]
            dt = t_next - t_cur
            v = field.velocity(x, t_cur)
            x_next = x + dt * v
            if method == "heun" and i < num_steps - 1:
                v_next = field.velocity(x_next, t_next, guide_at=t_cur)
                x_next = x + dt * 0.5 * (v + v_next)
            x = x_next
            yield x


def sample_ode(transport: Transport, model, noise: torch.Tensor, **kwargs) -> torch.Tensor:
    """The ODE sample (data end) of ``ode_states``."""
    return _last(ode_states(transport, model, noise, **kwargs))


def diffusion_coefficient(transport: Transport, t: torch.Tensor, form: str, norm: float = 1.0):
    """SiT ``compute_diffusion`` w(t) in data time tau (REPA's ``2 t`` is ``linear``: w = 1 - tau).

    The SDE is ``dx = [v + w score] dtau + sqrt(2 w) dW``; ``constant`` works here (SiT crashes)."""
    tau, nu = transport.data_time(t)
    if form == "constant":
        return torch.full_like(t, norm)
    if form == "sbdm":
        return norm * transport.drift_var(t, t)
    if form == "sigma":
        return norm * transport.tau_coefficients(t)[1]
    if form == "linear":
        return norm * nu
    if form == "decreasing":
        return 0.25 * (norm * torch.cos(math.pi * tau) + 1) ** 2
    return norm * torch.sin(math.pi * tau) ** 2


def _draw(source: NoiseSource, like: torch.Tensor) -> torch.Tensor:
    if callable(source):
        return source(like.shape).to(like)
    return torch.randn(like.shape, generator=source, device=like.device, dtype=like.dtype)


def sample_sde(
    transport: Transport,
    model,
    noise: torch.Tensor,
    method: str = "euler",
    num_steps: int = 250,
    diffusion_form: str = "sigma",
    diffusion_norm: float = 1.0,
    last_step: str | None = "mean",
    last_step_size: float = 0.04,
    model_kwargs=None,
    guidance: Guidance | None = None,
    noise_source: NoiseSource = None,
    progress: Progress = False,
) -> torch.Tensor:
    """SiT ``sample_sde`` (Euler-Maruyama ``euler`` or stochastic ``heun``; ``last_step`` None,
    ``mean`` (drift step), ``tweedie``, ``euler`` (ODE step) of ``last_step_size``) on the grid
    of ``num_steps`` points; REPA's ``euler_maruyama_sampler`` is ``euler`` with
    ``diffusion_form="linear"``, ``last_step="mean"``, 0.04. ``noise_source`` gives each step's
    N(0, I) draw: a generator, or a callable of the shape (recorded noise, in call order)."""
    require_positive_int("num_steps", num_steps)
    require_choice("SDE method", method, ("euler", "heun"))
    require_choice("diffusion_form", diffusion_form, DIFFUSION_FORMS)
    require_choice("last_step", last_step, LAST_STEPS)
    field = _Field(transport, model, model_kwargs, guidance)
    lss = last_step_size if last_step is not None else 0.0
    ts = transport.time_grid(num_steps - 1, noise.device, last_step_size=lss)
    sign = transport.sign

    def w(x, t):
        return diffusion_coefficient(
            transport, _Field._column(x, t), diffusion_form, diffusion_norm
        ).view(-1, *([1] * (x.ndim - 1)))

    def drift(x, t, guide_at):
        v, score = field.velocity_and_score(x, t, guide_at)
        return v + sign * w(x, t) * score

    x = noise
    with torch.no_grad():
        for i in with_progress(range(num_steps - 1), progress, f"transport-sde-{method}"):
            t_cur, t_next = ts[i], ts[i + 1]
            dt = t_next - t_cur
            dw = _draw(noise_source, x) * torch.sqrt(dt.abs())
            if method == "euler":
                x = x + drift(x, t_cur, t_cur) * dt + torch.sqrt(2 * w(x, t_cur)) * dw
            else:
                x_hat = x + torch.sqrt(2 * w(x, t_cur)) * dw
                k1 = drift(x_hat, t_cur, t_cur)
                k2 = drift(x_hat + dt * k1, t_next, t_cur)
                x = x_hat + 0.5 * dt * (k1 + k2)
        t_last, dt = ts[-1], sign * lss
        if last_step == "mean":
            x = x + drift(x, t_last, t_last) * dt
        elif last_step == "euler":
            x = x + field.velocity(x, t_last) * dt
        elif last_step == "tweedie":
            a, s, _, _ = transport.coefficients(_Field._column(x, t_last), x)
            x = x / a + s**2 / a * field.velocity_and_score(x, t_last)[1]
    return x
