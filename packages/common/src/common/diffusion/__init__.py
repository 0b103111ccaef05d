"""Diffusion processes: Gaussian diffusion with ADM's API (``create_diffusion``) and the transport
family of SiT, REPA, LightningDiT and our rectified flow (``Transport``), with guidance."""

from __future__ import annotations

from common.diffusion.gaussian import (
    GaussianDiffusion,
    LossType,
    ModelMeanType,
    ModelVarType,
    get_named_beta_schedule,
)
from common.diffusion.guidance import Guidance
from common.diffusion.respace import SpacedDiffusion, space_timesteps
from common.diffusion.transport import PRESETS, Transport, projection_loss
from common.diffusion.transport_sampling import ode_states, sample_ode, sample_sde

__all__ = [
    "PRESETS",
    "GaussianDiffusion",
    "Guidance",
    "LossType",
    "ModelMeanType",
    "ModelVarType",
    "SpacedDiffusion",
    "Transport",
    "create_diffusion",
    "get_named_beta_schedule",
    "ode_states",
    "projection_loss",
    "sample_ode",
    "sample_sde",
    "space_timesteps",
]


def create_diffusion(
    timestep_respacing: str | list[int] | None,
    noise_schedule: str = "linear",
    use_kl: bool = False,
    sigma_small: bool = False,
    predict_xstart: bool = False,
    learn_sigma: bool = True,
    rescale_learned_sigmas: bool = False,
    diffusion_steps: int = 1000,
    predict_v: bool = False,
) -> SpacedDiffusion:
    """Build a (possibly respaced) Gaussian diffusion, DiT's and ADM's factory.

    Defaults are DiT's (Sec. 2.4): linear schedule over 1000 steps, epsilon prediction,
    learned-range variance trained by the hybrid loss. ``timestep_respacing`` is ``""``/``None``
    for all steps (what training uses), ``"250"`` for 250 evenly spaced DDPM steps, ``"ddim50"``
    for DDIM's stride.
    ``predict_xstart`` selects x_0 prediction (G.pt), ``predict_v`` the v parameterisation.
    """
    if predict_xstart and predict_v:
        raise ValueError("choose at most one of predict_xstart and predict_v")
    betas = get_named_beta_schedule(noise_schedule, diffusion_steps)
    if use_kl:
        loss_type = LossType.RESCALED_KL
    elif rescale_learned_sigmas:
        loss_type = LossType.RESCALED_MSE
    else:
        loss_type = LossType.MSE
    if timestep_respacing is None or timestep_respacing == "":
        timestep_respacing = [diffusion_steps]
    if predict_xstart:
        mean_type = ModelMeanType.START_X
    elif predict_v:
        mean_type = ModelMeanType.VELOCITY
    else:
        mean_type = ModelMeanType.EPSILON
    if learn_sigma:
        var_type = ModelVarType.LEARNED_RANGE
    else:
        var_type = ModelVarType.FIXED_SMALL if sigma_small else ModelVarType.FIXED_LARGE
    return SpacedDiffusion(
        use_timesteps=space_timesteps(diffusion_steps, timestep_respacing),
        betas=betas,
        model_mean_type=mean_type,
        model_var_type=var_type,
        loss_type=loss_type,
    )
