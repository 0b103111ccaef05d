"""Target mode of GANgealing: PCA of W (Eq. 4.4), style-mixed targets (Eq. 4.3), psi annealing."""

from __future__ import annotations

import pytest
import torch

from gangealing.align.target import TargetMode, fit_w_pca, psi_schedule


def _linear_mapping(dim: int = 6):
    scales = torch.tensor([5.0, 3.0, 2.0, 1.0, 0.5, 0.25])[:dim]
    rot = torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(1)))[0]
    shift = torch.arange(dim, dtype=torch.float32)
    return (lambda z: (z * scales) @ rot.T + shift), rot, shift


def test_pca_recovers_the_principal_axes_and_does_not_depend_on_the_batch_size():
    mapping, rot, shift = _linear_mapping()
    mean, dirs = fit_w_pca(mapping, 6, 3, num_samples=20_000, batch_size=20_000)
    mean_b, dirs_b = fit_w_pca(mapping, 6, 3, num_samples=20_000, batch_size=777)
    torch.testing.assert_close(mean, mean_b, rtol=0, atol=1e-5)
    torch.testing.assert_close(dirs, dirs_b, rtol=0, atol=1e-4)
    assert mean.shape == (1, 6) and dirs.shape == (3, 6)
    torch.testing.assert_close(mean[0], shift, rtol=0, atol=0.1)
    # the true axes are the first three columns of rot, up to sign
    cos = (dirs @ rot[:, :3]).abs().diagonal()
    assert (cos > 0.99).all()
    torch.testing.assert_close(dirs @ dirs.T, torch.eye(3), rtol=0, atol=1e-5)


def test_pca_rejects_more_components_than_dimensions():
    mapping, _, _ = _linear_mapping()
    with pytest.raises(ValueError, match="N = 1 by default"):
        fit_w_pca(mapping, 6, 7, num_samples=10)


def test_psi_anneals_from_one_to_zero():
    for kind in ("linear", "cosine"):
        assert psi_schedule(0, 100, kind) == 1.0
        assert psi_schedule(100, 100, kind) == 0.0
        assert psi_schedule(5000, 100, kind) == 0.0
        values = [psi_schedule(s, 100, kind) for s in range(101)]
        assert all(a >= b for a, b in zip(values, values[1:], strict=False))
    assert psi_schedule(50, 100, "linear") == pytest.approx(0.5)
    assert psi_schedule(10, 0) == 0.0
    with pytest.raises(ValueError, match="'linear' or 'cosine'"):
        psi_schedule(1, 10, "exp")


def _target(k: int = 2) -> TargetMode:
    mapping, _, _ = _linear_mapping()
    target = TargetMode(6, num_components=2, num_modes=k, cutoff=3)
    target.assign_pca(*fit_w_pca(mapping, 6, 2, num_samples=4096))
    return target


def test_modes_start_at_the_mean_latent_and_follow_the_coefficients():
    target = _target()
    torch.testing.assert_close(target.modes(), target.w_mean.expand(2, -1))
    with torch.no_grad():
        target.coefficients.copy_(torch.tensor([[1.0, 0.0], [0.0, -2.0]]))
    expected = target.w_mean + torch.stack([target.directions[0], -2 * target.directions[1]])
    torch.testing.assert_close(target.modes(), expected)
    latents = target.w_mean + torch.tensor([[0.5, 1.5], [-1.0, 0.25]]) @ target.directions
    target.assign_modes(latents)
    torch.testing.assert_close(target.modes(), latents, rtol=0, atol=1e-5)


def test_style_mixing_puts_the_mode_in_the_first_layers_and_w_in_the_rest():
    target = _target()
    with torch.no_grad():
        target.coefficients.normal_()
    w = torch.randn(4, 6)
    mixed = target.mix(w, psi=0.0, num_layers=8)
    assert mixed.shape == (4, 2, 8, 6)
    modes = target.modes()
    for k in range(2):
        torch.testing.assert_close(mixed[:, k, :3], modes[k].expand(4, 3, 6))
        torch.testing.assert_close(mixed[:, k, 3:], w[:, None].expand(4, 5, 6))
    # psi = 1: no truncation, the target is the input's own latent in every layer
    torch.testing.assert_close(target.mix(w, 1.0, 8), w[:, None, None].expand(4, 2, 8, 6))
    half = target.mix(w, 0.5, 8)[:, 0, 0]
    torch.testing.assert_close(half, 0.5 * (w + modes[0]))


def test_gradients_reach_only_the_coefficients():
    target = _target(k=1)
    target.mix(torch.randn(3, 6), 0.0, 8).square().sum().backward()
    assert target.coefficients.grad is not None and target.coefficients.grad.abs().sum() > 0
    assert [n for n, _ in target.named_parameters()] == ["coefficients"]
    assert set(target.state_dict()) == {"w_mean", "directions", "coefficients"}


def test_bad_shapes_and_cutoffs_name_the_fix():
    target = TargetMode(6, num_components=2, cutoff=9)
    with pytest.raises(ValueError, match="num_components=2"):
        target.assign_pca(torch.zeros(1, 6), torch.zeros(3, 6))
    with pytest.raises(ValueError, match="thesis uses 5"):
        target.mix(torch.randn(2, 6), 0.0, num_layers=8)
    with pytest.raises(ValueError, match="K >= 1"):
        TargetMode(6, num_modes=0)
