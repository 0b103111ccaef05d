"""The transport module: our rectified flow as one preset, path identities, and the official
SiT, REPA and LightningDiT losses and samplers.

Fixtures in ``tests/diffusion_transformer/fixtures/{sit,repa,lightningdit}/`` were made by running
the official code (willisma/SiT ``transport/``, sihyun-yu/REPA ``loss.py``/``samplers.py``,
hustvl/LightningDiT ``transport/``/``inference.py``) on tiny randomised models, with every random
draw fixed or recorded (``make_fixtures.py`` under ``/work/official/<system>/``, described in
each system's facts sheet): the same x, t and noise must give the same losses, and the same
initial noise and recorded SDE noise the same samples.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from common.checkpoint import safe_load
from common.diffusion.guidance import Guidance
from common.diffusion.transport import PATHS, PRESETS, Transport, projection_loss
from common.diffusion.transport_sampling import (
    sample_ode,
    sample_sde,
)
from diffusion_transformer.models import DiT

FIXTURES = Path(__file__).parents[1] / "diffusion_transformer" / "fixtures"


def toy_model(x, t, y):
    """A smooth nonlinear field that reads the network time and the label; 2C channels, as a
    learned-sigma DiT returns."""
    tt = t.view(-1, 1, 1, 1).to(x.dtype)
    out = torch.sin(1.3 * x + 0.002 * tt) + 0.1 * y.view(-1, 1, 1, 1) - 0.3 * x * torch.cos(tt)
    return torch.cat([out, -out], dim=1)


# ----------------------------------------------------------------------------- rectified flow
def test_rectified_flow_preset_is_the_flow_of_our_runs():
    """Our flow (``diffusion=flow``): x_t = (1 - t) x + t z, target z - x, the network sees 1000 t,
    logit-normal training t; Euler steps on linspace(1, 0) shifted by s t / (1 + (s - 1) t)."""
    transport = Transport.from_preset("rectified_flow")
    t = transport.sample_timesteps(6, "cpu", generator=torch.Generator().manual_seed(3))
    drawn = torch.randn(6, generator=torch.Generator().manual_seed(3))
    assert torch.equal(t, torch.sigmoid(drawn))
    g = torch.Generator().manual_seed(0)
    x, noise = torch.randn(6, 3, 4, 4, generator=g), torch.randn(6, 3, 4, 4, generator=g)
    y = torch.arange(6)
    seen = []

    def model(x_t, t_net, y):
        seen.append((x_t, t_net))
        return toy_model(x_t, t_net, y)

    losses = transport.training_losses(model, x, t, {"y": y}, noise=noise)
    tt = t.view(-1, 1, 1, 1)
    torch.testing.assert_close(seen[0][0], (1 - tt) * x + tt * noise)
    assert torch.equal(seen[0][1], 1000 * t)
    v = toy_model(seen[0][0], 1000 * t, y)[:, :3]
    torch.testing.assert_close(losses["loss"], ((v - (noise - x)) ** 2).mean((1, 2, 3)))
    assert set(losses) == {"loss", "mse"}

    shifted = Transport.from_preset("rectified_flow", shift=3.0)
    grid = torch.linspace(1, 0, 8, dtype=torch.float64)
    grid = (3 * grid / (1 + 2 * grid)).float()
    state = noise
    for i in range(7):
        t_net = torch.full((6,), 1000 * float(grid[i]))
        state = state + (grid[i + 1] - grid[i]) * toy_model(state, t_net, y)[:, :3]
    ours = sample_ode(shifted, toy_model, noise, method="euler", num_steps=7, model_kwargs={"y": y})
    torch.testing.assert_close(ours, state)


# ----------------------------------------------------------------------------- path identities
def _transports():
    for path in PATHS:
        for data_at in (0, 1):
            yield Transport(path=path, data_at=data_at)


@pytest.mark.parametrize("tr", list(_transports()), ids=lambda tr: f"{tr.path}-{tr.data_at}")
def test_path_coefficients_and_their_derivatives(tr):
    t = torch.tensor([0.05, 0.3, 0.5, 0.8, 0.95], dtype=torch.float64)
    like = torch.zeros(5, 1, dtype=torch.float64)
    a, s, da, ds = tr.coefficients(t, like)
    h = 1e-6
    a_hi, s_hi, _, _ = tr.coefficients(t + h, like)
    a_lo, s_lo, _, _ = tr.coefficients(t - h, like)
    torch.testing.assert_close(da * torch.ones_like(a), (a_hi - a_lo) / (2 * h))
    torch.testing.assert_close(ds * torch.ones_like(s), (s_hi - s_lo) / (2 * h))
    ends = torch.tensor([0.0, 1.0], dtype=torch.float64)
    data_end, noise_end = (ends[1:], ends[:1]) if tr.data_at == 1 else (ends[:1], ends[1:])
    a_data, s_data, _, _ = tr.coefficients(data_end, like[:1])
    torch.testing.assert_close((a_data.item(), s_data.item()), (1.0, 0.0))
    a_noise, s_noise, _, _ = tr.coefficients(noise_end, like[:1])
    if tr.path == "vp":  # alpha(noise end) = exp(-(sigma_max - sigma_min)/4 - sigma_min/2)
        torch.testing.assert_close(a_noise.item(), math.exp(-0.25 * 19.9 - 0.05))
        torch.testing.assert_close(a_noise**2 + s_noise**2, torch.ones(1, 1, dtype=torch.float64))
    else:
        torch.testing.assert_close((a_noise.item(), s_noise.item()), (0.0, 1.0), atol=1e-15, rtol=0)
    if tr.path == "vp":  # SiT's VPCPlan.compute_drift: beta_t / 2
        tau = t if tr.data_at == 1 else 1 - t
        beta = 0.1 + (1 - tau) * (20.0 - 0.1)
        torch.testing.assert_close(tr.drift_var(t, like).flatten(), beta / 2)


@pytest.mark.parametrize("tr", list(_transports()), ids=lambda tr: f"{tr.path}-{tr.data_at}")
def test_velocity_score_and_noise_predictions_convert_into_each_other(tr):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 3, 2, 2, generator=g, dtype=torch.float64)
    z = torch.randn(4, 3, 2, 2, generator=g, dtype=torch.float64)
    t = torch.tensor([0.1, 0.4, 0.6, 0.9], dtype=torch.float64)
    a, s, da, ds = tr.coefficients(t, x)
    x_t, velocity, score = a * x + s * z, da * x + ds * z, -z / s
    for prediction, out in (("velocity", velocity), ("score", score), ("noise", z)):
        convert = Transport(path=tr.path, prediction=prediction, data_at=tr.data_at)
        v, sc = convert.velocity_and_score(out, x_t, t)
        torch.testing.assert_close(v, velocity)
        torch.testing.assert_close(sc, score)


def test_the_direction_of_time_only_flips_the_velocity():
    sit, repa = Transport.from_preset("sit"), Transport.from_preset("repa")
    t = torch.tensor([0.2, 0.7])
    x, z = torch.randn(2, 3), torch.randn(2, 3)
    a1, s1, da1, ds1 = sit.coefficients(t, x)
    a0, s0, da0, ds0 = repa.coefficients(1 - t, x)
    torch.testing.assert_close(a1 * x + s1 * z, a0 * x + s0 * z)
    torch.testing.assert_close(da1 * x + ds1 * z, -(da0 * x + ds0 * z))


def test_presets_and_settings_are_checked():
    assert set(PRESETS) == {"sit", "repa", "lightningdit", "rectified_flow"}
    with pytest.raises(ValueError, match="preset='dit' is not one of"):
        Transport.from_preset("dit")
    with pytest.raises(ValueError, match="path='cosine' is not one of"):
        Transport(path="cosine")
    with pytest.raises(ValueError, match="cosine_weight compares velocities"):
        Transport(prediction="noise", cosine_weight=1.0)
    with pytest.raises(ValueError, match="not one of euler, heun"):
        sample_sde(Transport(), toy_model, torch.zeros(1, 1), method="rk4")


def test_projection_loss_is_minus_the_mean_cosine():
    z = torch.randn(3, 5, 8)
    assert torch.allclose(projection_loss([z, z], [2 * z, z]), -torch.ones(3))
    assert torch.allclose(projection_loss([z], [-z]), torch.ones(3))
    with pytest.raises(ValueError, match="the model returned no projections; build the model"):
        projection_loss([z], None)


def test_gaussian_diffusion_adds_the_projection_term_as_the_transport_does():
    """REPA on DiT's DDPM objective: the same ``proj`` term, outside ``loss``."""
    from common.diffusion import create_diffusion

    z, z_tilde = torch.randn(2, 4, 8), torch.randn(2, 4, 8)
    x = torch.randn(2, 1, 4, 4)

    def model(x_t, t, **kw):  # eps and a learned-variance channel, plus projections
        return torch.zeros(x_t.shape[0], 2, *x_t.shape[2:]), [z_tilde]

    diffusion = create_diffusion("", learn_sigma=True)
    t = torch.tensor([10, 500])
    terms = diffusion.training_losses(model, x, t, noise=torch.randn_like(x), zs=[z])
    assert torch.allclose(terms["proj"], projection_loss([z], [z_tilde]))
    assert torch.allclose(terms["loss"], terms["mse"] + terms["vb"])
    with pytest.raises(ValueError, match="returned no projections"):
        diffusion.training_losses(lambda x_t, t, **kw: model(x_t, t)[0], x, t, zs=[z])


# ----------------------------------------------------------------------------- SiT
def sit_model() -> DiT:
    """SiT's released format (``sit.pt``, a plain state dict) loads into our DiT strictly."""
    model = DiT(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=4,
                num_classes=10, learn_sigma=True).eval()  # fmt: skip
    model.load_state_dict(torch.load(FIXTURES / "sit" / "sit.pt", weights_only=True))
    return model


def test_sit_losses_match_the_official_transport():
    """SiT ``Transport.training_losses`` for every path x prediction x loss weight, fixed x1, x0
    and the uniforms u behind t (t = u (t1 - t0) + t0 on the train interval)."""
    fx, model = load_file(FIXTURES / "sit" / "losses.safetensors"), sit_model()
    for path in PATHS:
        for prediction in ("velocity", "score", "noise"):
            key = f"{path}.{prediction}"
            for weight in (None, "velocity", "likelihood"):
                tr = Transport.from_preset(
                    "sit", path=path, prediction=prediction, loss_weight=weight
                )
                lo, hi = tr.interval(sample=False)
                assert torch.tensor([lo, hi]).equal(fx[f"{key}.train_interval"].float())
                t = fx["u"] * (hi - lo) + lo
                torch.testing.assert_close(t, fx[f"{key}.t"], rtol=0, atol=0)
                with torch.no_grad():
                    terms = tr.training_losses(model, fx["x1"], t, {"y": fx["y"]}, fx["x0"])
                expected = fx[f"{key}.{weight or 'none'}.loss"]
                torch.testing.assert_close(terms["loss"], expected, rtol=1e-6, atol=1e-6)


def _sit_sampler_runs(kind: str) -> list[str]:
    with safe_open(FIXTURES / "sit" / "samplers.safetensors", "pt") as f:
        keys = sorted(f.keys())
    return [k for k in keys if k.startswith(kind + ".") and k.endswith("cfg") and k.count(".") > 3]


SIT_FORMS = {"SBDM": "sbdm", "inccreasing-decreasing": "increasing-decreasing"}


@pytest.mark.parametrize("kind", ["ode", "sde"])
def test_sit_samplers_match_the_official_sampler(kind):
    """SiT ``Sampler.sample_ode`` (euler, heun2, dopri5; 10 grid points = 9 steps here) and
    ``sample_sde`` (Euler, Heun; every diffusion form and last step whose official result is
    finite; 10 points; the recorded ``th.randn`` draws), without and with ``forward_with_cfg``
    (scale 4, channels 0..2) for every path and prediction the fixture holds."""
    fx, model = load_file(FIXTURES / "sit" / "samplers.safetensors"), sit_model()
    runs = _sit_sampler_runs(kind)
    assert len(runs) >= (30 if kind == "ode" else 80)
    for key in runs:
        _, path, prediction, method, *rest, cfg = key.split(".")
        tr = Transport.from_preset("sit", path=path, prediction=prediction)
        guidance = Guidance(4.0, 10, channels=3) if cfg == "cfg" else None
        kwargs = dict(model_kwargs={"y": fx["y"]}, guidance=guidance)
        if kind == "ode":
            x = sample_ode(tr, model, fx["z"], method=method, num_steps=9, **kwargs)
        else:
            draws = iter(fx[f"sde.noise.{cfg}"][:, :2])
            form, last = rest
            x = sample_sde(tr, model, fx["z"], method, 10, SIT_FORMS.get(form, form),
                           last_step=None if last == "none" else last,
                           noise_source=lambda shape, d=draws: next(d), **kwargs)  # fmt: skip
        expected = fx[key][:2]
        torch.testing.assert_close(x, expected, rtol=1e-5, atol=1e-5, msg=key)


# ----------------------------------------------------------------------------- REPA
def repa_model(entry: str = "ema") -> DiT:
    """REPA's ``train.py`` checkpoint (``model``/``ema``) into our DiT with its projectors."""
    state = safe_load(FIXTURES / "repa" / "repa.pt")[entry]
    dims = [state[f"projectors.{i}.4.weight"].shape[0] for i in (0, 1)]
    hidden, projector_hidden = state["pos_embed"].shape[-1], state["projectors.0.0.weight"].shape[0]
    model = DiT(input_size=8, patch_size=2, in_channels=4, hidden_size=hidden, depth=2,
                num_heads=4, num_classes=10, learn_sigma=False, projector_dims=dims,
                encoder_depth=1, projector_hidden=projector_hidden)  # fmt: skip
    model.load_state_dict(state)
    return model.eval()


@pytest.mark.parametrize("path", ["linear", "cosine"])
@pytest.mark.parametrize("weighting", ["uniform", "lognormal"])
def test_repa_losses_match_the_official_siloss(path, weighting):
    """``SILoss`` for fixed images, t, noise and encoder features: the denoising loss per sample,
    the projection loss, and REPA's objective with proj_coeff 0.5."""
    fx, key = load_file(FIXTURES / "repa" / "losses.safetensors"), f"{path}.{weighting}"
    tr = Transport.from_preset(
        "repa", path="linear" if path == "linear" else "gvp", time_sampling=weighting
    )
    kwargs = {"y": fx["y"], "return_projections": True}
    with torch.no_grad():
        terms = tr.training_losses(repa_model("model"), fx["images"], fx[f"{key}.t"], kwargs,
                                   fx[f"{key}.noise"], zs=[fx["zs.0"], fx["zs.1"]])  # fmt: skip
    torch.testing.assert_close(terms["mse"], fx[f"{key}.denoising_loss"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(terms["proj"].mean(), fx[f"{key}.proj_loss"], rtol=0, atol=1e-7)
    total = terms["loss"].mean() + 0.5 * terms["proj"].mean()
    torch.testing.assert_close(total, fx[f"{key}.loss"], rtol=1e-6, atol=1e-6)
    if weighting == "lognormal":  # REPA: sigma = exp(N(0, 1)), t = sigma/(1+sigma) or atan
        sigma = torch.randn(4, generator=torch.Generator().manual_seed(7)).exp()
        expected = sigma / (1 + sigma) if path == "linear" else 2 / math.pi * torch.atan(sigma)
        t = tr.sample_timesteps(4, "cpu", generator=torch.Generator().manual_seed(7))
        torch.testing.assert_close(t, expected)


@pytest.mark.parametrize("cfg", [1.0, 1.8])
@pytest.mark.parametrize("run", ["euler", "heun", "sde", "sde_cosine"])
def test_repa_samplers_match_the_official_ones(run, cfg):
    """``euler_sampler`` (heun=False/True) and ``euler_maruyama_sampler`` (linear, cosine), 10
    steps, guidance interval [0, 0.7] at scale 1.8, the recorded SDE noise; REPA integrates in
    float64, we in float32."""
    fx = load_file(FIXTURES / "repa" / "samplers.safetensors")
    tr = Transport.from_preset("repa", path="gvp" if run == "sde_cosine" else "linear")
    kwargs = dict(model_kwargs={"y": fx["y"]}, guidance=Guidance(cfg, 10, (0.0, 0.7)))
    if run in ("euler", "heun"):
        x = sample_ode(tr, repa_model(), fx["latents"], method=run, num_steps=10, **kwargs)
    else:
        draws = iter(fx["sde.noise"])
        x = sample_sde(tr, repa_model(), fx["latents"], num_steps=10, diffusion_form="linear",
                       noise_source=lambda shape: next(draws), **kwargs)  # fmt: skip
    torch.testing.assert_close(x.double(), fx[f"{run}.cfg{cfg}.samples"], rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- LightningDiT
def lightningdit_model() -> DiT:
    """The all-options LightningDiT (``{"ema": ...}``, as ``inference.py`` reads it)."""
    model = DiT(input_size=4, patch_size=1, in_channels=8, hidden_size=64, depth=2, num_heads=4,
                num_classes=10, learn_sigma=False, qk_norm=True, use_rmsnorm=True,
                use_swiglu=True, use_rope=True, wo_shift=True)  # fmt: skip
    path = FIXTURES / "lightningdit" / "lightningdit.pt"
    model.load_state_dict(torch.load(path, weights_only=True)["ema"])
    return model.eval()


def test_lightningdit_loss_matches_the_official_transport():
    """``training_losses`` with ``use_cosine_loss``, ``use_lognorm`` for fixed x1, x0 and t."""
    fx = load_file(FIXTURES / "lightningdit" / "losses.safetensors")
    tr = Transport.from_preset("lightningdit")
    with torch.no_grad():
        terms = tr.training_losses(
            lightningdit_model(), fx["x1"], fx["t"], {"y": fx["y"]}, noise=fx["x0"]
        )
    torch.testing.assert_close(terms["mse"], fx["loss"], rtol=0, atol=1e-6)
    torch.testing.assert_close(terms["cos"], fx["cos_loss"], rtol=0, atol=1e-6)
    torch.testing.assert_close(terms["loss"].mean(), fx["total"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("cfg", [False, True])
def test_lightningdit_euler_matches_inference(cfg):
    """``inference.py``'s ODE: ``sample_ode(euler, num_steps=10, timestep_shift=0.3)`` = 9 steps
    with shift 1/0.3 here; CFG 6.7 on channels 0..2 from ``cfg_interval_start`` 0.125 on."""
    fx = load_file(FIXTURES / "lightningdit" / "samplers.safetensors")
    tr = Transport.from_preset("lightningdit")
    torch.testing.assert_close(tr.time_grid(9), fx["t_grid"], rtol=0, atol=1e-7)
    start, scale = float(fx["cfg_interval_start"]), float(fx["cfg_scale"])
    guidance = Guidance(scale, 10, (start, 1.0), channels=3) if cfg else None
    kwargs = dict(model_kwargs={"y": fx["y"]}, guidance=guidance)
    x = sample_ode(tr, lightningdit_model(), fx["z"], method="euler", num_steps=9, **kwargs)
    expected = fx["sample_cfg" if cfg else "sample_nocfg"]
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-5)
