"""Our rectified flow (the transport's ``rectified_flow`` preset) on a two-point dataset, where
the optimal velocity field is known exactly."""

import pytest
import torch

from common.diffusion import Transport, sample_ode


def flow(**settings) -> Transport:
    return Transport.from_preset("rectified_flow", **settings)


A, B = torch.tensor([2.0, 0.0]), torch.tensor([-1.0, 1.0])


def optimal_velocity(x, t):
    """E[z - x0 | x_t] for x0 uniform on {A, B}: x_t | x0 ~ N((1 - t) x0, t^2 I)."""
    t = t.view(-1, 1)
    logp = torch.stack([-((x - (1 - t) * p) ** 2).sum(-1) / (2 * t[:, 0] ** 2) for p in (A, B)], -1)
    w = torch.softmax(logp, -1)
    x0_hat = w[:, :1] * A + w[:, 1:] * B
    return (x - x0_hat) / t


def as_model(fn, time_scale=1000.0):
    def model(x, t_scaled, **kwargs):
        return fn(x, t_scaled / time_scale)

    return model


def test_optimal_velocity_minimises_the_flow_loss():
    uniform = flow(time_sampling="uniform")
    g = torch.Generator().manual_seed(0)
    x0 = torch.where(torch.rand(20000, 1, generator=g) < 0.5, A, B)
    t = uniform.sample_timesteps(20000, "cpu", generator=g).clamp(0.02, 0.98)
    noise = torch.randn(20000, 2, generator=g)
    best = uniform.training_losses(as_model(optimal_velocity), x0, t, noise=noise)["loss"].mean()
    for perturb in (0.1, -0.1):
        worse = uniform.training_losses(
            as_model(lambda x, t, d=perturb: optimal_velocity(x, t) + d), x0, t, noise=noise
        )["loss"].mean()
        assert worse > best + 0.005
    # The loss at the optimum is the conditional variance of z - x0, strictly positive.
    assert 0 < best < 2.0


@pytest.mark.parametrize("method,steps", [("euler", 200), ("heun", 50)])
def test_sampler_transports_noise_onto_the_data(method, steps):
    noise = torch.randn(400, 2, generator=torch.Generator().manual_seed(1))
    # Start just below t = 1 is not needed: the field is finite at t = 1.
    samples = sample_ode(flow(), as_model(optimal_velocity), noise, method=method, num_steps=steps)
    dist = torch.minimum((samples - A).norm(dim=-1), (samples - B).norm(dim=-1))
    assert dist.max() < 0.05
    frac_a = ((samples - A).norm(dim=-1) < 0.05).float().mean()
    assert 0.4 < frac_a < 0.6


def test_time_sampling_and_interpolant():
    t = flow().sample_timesteps(10000, "cpu")
    assert t.min() > 0 and t.max() < 1 and abs(t.mean() - 0.5) < 0.02
    a, s, _, _ = flow().coefficients(torch.tensor([0.0, 1.0]), torch.ones(2, 3))
    assert a[:, 0].tolist() == [1.0, 0.0] and s[:, 0].tolist() == [0.0, 1.0]  # t = 1 is noise
    with pytest.raises(ValueError, match="time_sampling='beta' is not one of"):
        flow(time_sampling="beta")
