"""Gaussian diffusion (thesis Sec. 2.3.1, 2.4) against closed forms, respacing identities and an
independent implementation of the same DDPM/DDIM updates (diffusers' schedulers)."""

import math

import numpy as np
import pytest
import torch

from common.diffusion import (
    GaussianDiffusion,
    LossType,
    ModelMeanType,
    ModelVarType,
    create_diffusion,
    get_named_beta_schedule,
    space_timesteps,
)
from common.diffusion.likelihood import discretized_gaussian_log_likelihood, normal_kl


class LinearModel(torch.nn.Module):
    """A deterministic stand-in network: output depends on x, t and y."""

    def __init__(self, channels=3, out_channels=6):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.w = torch.nn.Parameter(torch.randn(out_channels, channels, generator=g) * 0.3)
        self.seen_t = []

    def forward(self, x, t, y=None):
        self.seen_t.append(t.clone())
        out = torch.einsum("oc,nchw->nohw", self.w, x)
        out = out + 0.1 * torch.sin(t.float() / 100).view(-1, 1, 1, 1)
        if y is not None:
            out = out + 0.05 * y.float().view(-1, 1, 1, 1)
        return torch.tanh(out)


def test_linear_schedule_matches_thesis():
    betas = get_named_beta_schedule("linear", 1000)
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(2e-2)
    assert betas.dtype == np.float64 and len(betas) == 1000
    cosine = get_named_beta_schedule("cosine", 1000)
    assert cosine.max() <= 0.999 and np.all(np.diff(np.cumprod(1 - cosine)) < 0)
    with pytest.raises(ValueError, match="unknown noise schedule"):
        get_named_beta_schedule("quadratic", 10)


def test_q_sample_and_posterior_closed_form():
    d = create_diffusion("")
    x0, noise = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)
    t = torch.tensor([0, 10, 500, 999])
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    a = torch.tensor(abar[t.numpy()], dtype=torch.float32).view(-1, 1, 1, 1)
    torch.testing.assert_close(d.q_sample(x0, t, noise), a.sqrt() * x0 + (1 - a).sqrt() * noise)
    # Posterior q(x_{t-1} | x_t, x_0) by Bayes' rule on the two Gaussians, for t = 500.
    ti = 500
    beta, a_prev = 1 - abar[ti] / abar[ti - 1], abar[ti - 1]
    xt = d.q_sample(x0, torch.full((4,), ti), noise)
    var = 1 / (1 / (1 - a_prev) + (1 - beta) / beta)
    mean = var * (math.sqrt(a_prev) / (1 - a_prev) * x0 + math.sqrt(1 - beta) / beta * xt)
    m, v, logv = d.q_posterior_mean_variance(x0, xt, torch.full((4,), ti))
    torch.testing.assert_close(m, mean.float(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(v[0, 0, 0, 0].item(), var, rtol=1e-5, atol=0)
    # Clipped log-variance at t = 0 uses the value of t = 1.
    _, _, logv0 = d.q_posterior_mean_variance(x0, xt, torch.zeros(4, dtype=torch.long))
    assert logv0[0, 0, 0, 0].item() == pytest.approx(math.log(d.posterior_variance[1]), rel=1e-6)


def test_space_timesteps_formats():
    assert space_timesteps(1000, "ddim50") == set(range(0, 1000, 20))
    steps = sorted(space_timesteps(1000, "250"))
    assert len(steps) == 250 and steps[0] == 0 and steps[-1] == 999
    assert len(space_timesteps(300, "10,15,20")) == 45
    assert space_timesteps(1000, [1000]) == set(range(1000))
    with pytest.raises(ValueError, match="exactly 37"):
        space_timesteps(1000, "ddim37")
    with pytest.raises(ValueError, match="cannot divide"):
        space_timesteps(10, "20")


def test_respacing_preserves_marginals_and_calls_model_with_original_steps():
    base = create_diffusion("")
    spaced = create_diffusion("ddim10")
    assert spaced.num_timesteps == 10
    kept = spaced.timestep_map.numpy()
    np.testing.assert_allclose(spaced.alphas_cumprod, base.alphas_cumprod[kept], rtol=1e-12)
    model = LinearModel()
    spaced.p_sample(model, torch.randn(2, 3, 4, 4), torch.tensor([9, 3]))
    assert model.seen_t[-1].tolist() == [900, 300]


def test_respacing_at_full_length_equals_unrespaced_process():
    betas = get_named_beta_schedule("linear", 1000)
    plain = GaussianDiffusion(
        betas=betas,
        model_mean_type=ModelMeanType.EPSILON,
        model_var_type=ModelVarType.LEARNED_RANGE,
        loss_type=LossType.MSE,
    )
    spaced = create_diffusion("1000")
    for name in ("betas", "alphas_cumprod", "posterior_log_variance_clipped"):
        np.testing.assert_allclose(getattr(spaced, name), getattr(plain, name), rtol=1e-12)
    model = LinearModel()
    x0, noise, t = (
        torch.rand(4, 3, 4, 4) * 2 - 1,
        torch.randn(4, 3, 4, 4),
        torch.tensor([0, 1, 500, 999]),
    )
    a = spaced.training_losses(model, x0, t, noise=noise)
    b = plain.training_losses(model, x0, t, noise=noise)
    for key in ("loss", "mse", "vb"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    shortened = lambda d: d  # noqa: E731 - same loops on both
    outs = []
    for d in (spaced, plain):
        g = torch.Generator().manual_seed(3)
        outs.append(shortened(d).p_sample_loop(model, (2, 3, 4, 4), noise=noise[:2], generator=g))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


def test_ddim_with_eta_zero_is_deterministic():
    d = create_diffusion("ddim25")
    model, noise = LinearModel(), torch.randn(2, 3, 4, 4)
    torch.manual_seed(0)
    a = d.ddim_sample_loop(model, (2, 3, 4, 4), noise=noise)
    torch.manual_seed(123)
    b = d.ddim_sample_loop(model, (2, 3, 4, 4), noise=noise)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    c = d.ddim_sample_loop(model, (2, 3, 4, 4), noise=noise, eta=1.0)
    assert not torch.allclose(a, c)


def test_p_sample_matches_diffusers_ddpm_learned_range():
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        beta_start=1e-4,
        beta_end=0.02,
        variance_type="learned_range",
        clip_sample=True,
        prediction_type="epsilon",
    )
    sched.set_timesteps(250)  # diffusers' "leading" spacing = ADM's "ddim250" stride
    ours = create_diffusion("ddim250")
    assert ours.timestep_map.flip(0).tolist() == sched.timesteps.tolist()
    model = LinearModel()
    x_ours = x_ref = torch.randn(2, 3, 4, 4)
    g_ours, g_ref = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for i, t in enumerate(sched.timesteps[:30].tolist()):
        idx = torch.full((2,), 249 - i)
        x_ours = ours.p_sample(model, x_ours, idx, generator=g_ours)["sample"]
        out = model(x_ref, torch.full((2,), t))
        x_ref = sched.step(out, t, x_ref, generator=g_ref).prev_sample
    torch.testing.assert_close(x_ours, x_ref, atol=2e-4, rtol=1e-3)


def test_ddim_sample_matches_diffusers_ddim():
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        beta_start=1e-4,
        beta_end=0.02,
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=0,
    )
    sched.set_timesteps(50)
    ours = create_diffusion("ddim50", learn_sigma=False)
    model = LinearModel(out_channels=3)
    noise = torch.randn(2, 3, 4, 4)
    x_ours = ours.ddim_sample_loop(model, (2, 3, 4, 4), noise=noise, clip_denoised=False)
    x_ref = noise
    for t in sched.timesteps.tolist():
        x_ref = sched.step(model(x_ref, torch.full((2,), t)), t, x_ref, eta=0.0).prev_sample
    torch.testing.assert_close(x_ours, x_ref, atol=2e-4, rtol=1e-3)


def test_normal_kl_and_decoder_likelihood_closed_forms():
    m1, lv1, m2, lv2 = torch.tensor(0.3), torch.tensor(-1.0), torch.tensor(-0.2), torch.tensor(0.5)
    s1, s2 = math.exp(-0.5), math.exp(0.25)
    expected = math.log(s2 / s1) + (s1**2 + 0.5**2) / (2 * s2**2) - 0.5
    assert normal_kl(m1, lv1, m2, lv2).item() == pytest.approx(expected, rel=1e-6)
    assert normal_kl(m1, lv1, m1, lv1).item() == pytest.approx(0.0, abs=1e-7)
    # A sharp Gaussian centred on a pixel value puts nearly all its mass in that pixel's bin.
    x = torch.tensor([0.0, -1.0, 1.0])
    ll = discretized_gaussian_log_likelihood(x, means=x, log_scales=torch.full_like(x, -8.0))
    assert torch.all(ll > -1e-3)


def test_hybrid_loss_terms():
    d = create_diffusion("")
    x0, noise = torch.rand(3, 3, 4, 4) * 2 - 1, torch.randn(3, 3, 4, 4)
    t = torch.tensor([0, 300, 999])
    eps_pred = torch.randn(3, 3, 4, 4, requires_grad=True)
    var_pred = torch.zeros(3, 3, 4, 4, requires_grad=True)
    terms = d.training_losses(lambda x, t: torch.cat([eps_pred, var_pred], 1), x0, t, noise=noise)
    torch.testing.assert_close(terms["mse"], ((eps_pred - noise) ** 2).mean(dim=(1, 2, 3)))
    torch.testing.assert_close(terms["loss"], terms["mse"] + terms["vb"])
    # The VLB term trains only the variance (the mean is detached), L_simple only the mean.
    (g_eps, g_var) = torch.autograd.grad(terms["vb"].sum(), [eps_pred, var_pred], allow_unused=True)
    assert (g_eps is None or torch.all(g_eps == 0)) and g_var.abs().sum() > 0
    # For t > 0 the vb term is KL(q || p) in bits per dimension, computed independently here.
    out = d.p_mean_variance(
        lambda x, t: torch.cat([eps_pred, var_pred], 1).detach(),
        d.q_sample(x0, t, noise),
        t,
        clip_denoised=False,
    )
    true_mean, _, true_logvar = d.q_posterior_mean_variance(x0, d.q_sample(x0, t, noise), t)
    kl = normal_kl(true_mean, true_logvar, out["mean"], out["log_variance"]).mean(dim=(1, 2, 3))
    torch.testing.assert_close(terms["vb"][1:], kl[1:] / math.log(2.0))


@pytest.mark.parametrize("kind", ["x0", "v", "eps"])
def test_parameterisations_oracle_prediction_is_exact(kind):
    d = create_diffusion("", learn_sigma=False, predict_xstart=kind == "x0", predict_v=kind == "v")
    x0, noise = torch.rand(4, 3, 4, 4) * 2 - 1, torch.randn(4, 3, 4, 4)
    t = torch.tensor([1, 100, 600, 999])
    target = {"x0": x0, "eps": noise, "v": d.get_v(x0, noise, t)}[kind]
    terms = d.training_losses(lambda x, t: target, x0, t, noise=noise)
    assert torch.all(terms["mse"] == 0) and "vb" not in terms
    xt = d.q_sample(x0, t, noise)
    out = d.p_mean_variance(lambda x, t: target, xt, t, clip_denoised=False)
    torch.testing.assert_close(out["pred_xstart"], x0, atol=2e-4, rtol=1e-4)


def test_fixed_variances_and_kl_loss():
    small = create_diffusion("", learn_sigma=False, sigma_small=True)
    large = create_diffusion("", learn_sigma=False)
    x = torch.randn(1, 3, 2, 2)
    t = torch.tensor([500])
    vs = small.p_mean_variance(lambda x, t: x * 0, x, t)["variance"][0, 0, 0, 0].item()
    vl = large.p_mean_variance(lambda x, t: x * 0, x, t)["variance"][0, 0, 0, 0].item()
    assert vs == pytest.approx(small.posterior_variance[500], rel=1e-6)
    assert vl == pytest.approx(large.betas[500], rel=1e-6)
    kl = create_diffusion("", use_kl=True)
    assert set(kl.training_losses(LinearModel(), torch.rand(2, 3, 4, 4), torch.tensor([3, 4]))) == {
        "loss"
    }


def test_wrong_output_channels_named():
    d = create_diffusion("")
    with pytest.raises(ValueError, match="learn_sigma"):
        d.training_losses(lambda x, t: x, torch.randn(2, 3, 4, 4), torch.tensor([1, 2]))
