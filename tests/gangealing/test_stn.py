"""Spatial Transformers and correspondence utilities (thesis Sec. 4.3.1, 4.4.1-4.4.2)."""

import math

import pytest
import torch
import torch.nn.functional as F

from common.errors import NonFiniteError
from gangealing.align.flow import total_variation_huber
from gangealing.align.stn import (
    ComposedTransformer,
    FlowTransformer,
    SimilarityTransformer,
    compose_grids,
    identity_grid,
    image_to_image_points,
    normalized_to_pixel,
    pixel_to_normalized,
    transfer_points_from_congealed,
    transfer_points_to_congealed,
    warp,
)

TINY = dict(input_size=16, widths=(8, 16), padding_mode="reflection")


def _similarity_matrix(rotation: float, scale: float, tx: float, ty: float) -> torch.Tensor:
    c, s = scale * math.cos(rotation), scale * math.sin(rotation)
    return torch.tensor([[[c, -s, tx], [s, c, ty]]])


def _analytic_reverse(points_px: torch.Tensor, matrix: torch.Tensor, size: int) -> torch.Tensor:
    """Congealed pixel -> input pixel under the reverse affine ``matrix`` (square images)."""
    u = pixel_to_normalized(points_px, size)
    return normalized_to_pixel(u @ matrix[0, :, :2].T + matrix[0, :, 2], size)


def _perturb(module: torch.nn.Module, scale: float = 0.1, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.head[-1].parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * scale)


def _models():
    torch.manual_seed(0)
    sim = SimilarityTransformer(**TINY)
    flow = FlowTransformer(**TINY, flow_size=8)
    composed = ComposedTransformer(
        SimilarityTransformer(**TINY), FlowTransformer(**TINY, flow_size=8)
    )
    return sim, flow, composed


def test_pixel_normalized_convention():
    points = torch.tensor([[0.0, 0.0], [31.0, 15.0], [15.5, 7.5]])
    u = pixel_to_normalized(points, (16, 32))
    torch.testing.assert_close(u[0], torch.tensor([-1 + 1 / 32, -1 + 1 / 16]))
    torch.testing.assert_close(u[1], torch.tensor([1 - 1 / 32, 1 - 1 / 16]))
    torch.testing.assert_close(u[2], torch.zeros(2))
    torch.testing.assert_close(normalized_to_pixel(u, (16, 32)), points)
    # identity_grid holds the pixel centres.
    grid = identity_grid(1, 16, 32)
    torch.testing.assert_close(
        normalized_to_pixel(grid[0, 3, 5], (16, 32)), torch.tensor([5.0, 3.0])
    )


@pytest.mark.parametrize("index", [0, 1, 2])
def test_fresh_transformers_are_identity(index):
    model = _models()[index]
    x = torch.rand(2, 3, 20, 20) * 2 - 1
    out = model(x)
    torch.testing.assert_close(out.image, x, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.grid, identity_grid(2, 20, 20), atol=1e-6, rtol=0)
    assert not out.flipped.any()
    if out.flow is not None:
        assert out.flow.abs().max() == 0


def test_known_similarity_points_both_directions():
    size = 32
    matrix = _similarity_matrix(0.4, 0.8, 0.1, -0.05)
    grid = F.affine_grid(matrix, [1, 1, size, size], align_corners=False)
    # Bilinear sampling reproduces a linear image exactly: check warp against the analytic map.
    u = identity_grid(1, size, size)
    image = (0.5 * u[..., 0] - 0.3 * u[..., 1]).unsqueeze(1)
    warped = warp(image, grid, "reflection")
    mapped = grid[..., 0] * 0.5 - grid[..., 1] * 0.3
    inside = (grid.abs() <= 1 - 1 / size).all(-1)  # within the hull of the pixel centres
    assert inside.float().mean() > 0.9
    torch.testing.assert_close(warped[:, 0][inside], mapped[inside], atol=1e-5, rtol=0)

    congealed = torch.tensor([[[3.0, 4.0], [16.0, 16.0], [27.5, 9.25], [10.0, 28.0]]])
    expected_input = _analytic_reverse(congealed[0], matrix, size)[None]
    from_congealed = transfer_points_from_congealed(congealed, grid)
    assert (from_congealed - expected_input).norm(dim=-1).max() < 0.5
    torch.testing.assert_close(from_congealed, expected_input, atol=1e-3, rtol=0)
    to_congealed = transfer_points_to_congealed(expected_input, grid)
    assert (to_congealed - congealed).norm(dim=-1).max() < 0.5
    torch.testing.assert_close(to_congealed, congealed, atol=1e-3, rtol=0)


def test_point_round_trip_through_flow_grid():
    size = 32
    u = identity_grid(1, size, size)
    grid = 0.9 * u + 0.04 * torch.sin(3 * u.flip(-1))  # smooth, invertible, non-affine
    congealed = torch.rand(1, 20, 2, generator=torch.Generator().manual_seed(1)) * 24 + 4
    back = transfer_points_to_congealed(transfer_points_from_congealed(congealed, grid), grid)
    assert (back - congealed).norm(dim=-1).max() < 0.5


def test_point_outside_congealed_view_maps_inside_image():
    grid = F.affine_grid(
        _similarity_matrix(0.0, 0.5, 0.0, 0.0), [1, 1, 16, 16], align_corners=False
    )
    corner = torch.tensor([[[0.0, 0.0]]])  # input corner, not visible in a 2x zoom
    mapped = transfer_points_to_congealed(corner, grid)
    assert torch.isfinite(mapped).all() and (mapped >= -0.5).all() and (mapped <= 15.5).all()
    assert mapped.norm() < 0.75  # the nearest visible spot: the congealed corner


def test_image_to_image_points_matches_analytic():
    size = 32
    a = _similarity_matrix(0.3, 0.9, 0.05, 0.0)
    b = _similarity_matrix(-0.2, 0.85, -0.1, 0.05)
    grid_a, grid_b = (F.affine_grid(m, [1, 1, size, size], align_corners=False) for m in (a, b))
    congealed = torch.tensor([[[8.0, 10.0], [20.0, 14.0], [15.0, 24.0]]])
    points_a = _analytic_reverse(congealed[0], a, size)[None]
    points_b = _analytic_reverse(congealed[0], b, size)[None]
    predicted = image_to_image_points(points_a, grid_a, grid_b)
    assert (predicted - points_b).norm(dim=-1).max() < 0.05


def test_compose_grids_equals_affine_composition():
    a = _similarity_matrix(0.2, 0.9, 0.05, 0.02)
    b = _similarity_matrix(-0.1, 0.95, -0.03, 0.04)
    ga, gb = (F.affine_grid(m, [1, 1, 24, 24], align_corners=False) for m in (a, b))
    homogeneous = lambda m: torch.cat([m[0], torch.tensor([[0.0, 0.0, 1.0]])])
    ab = (homogeneous(a) @ homogeneous(b))[:2][None]
    expected = F.affine_grid(ab, [1, 1, 24, 24], align_corners=False)
    inside = (gb.abs() <= 1 - 1 / 24).all(-1)  # outside the centres' hull `outer` is clamped
    assert inside.float().mean() > 0.8
    torch.testing.assert_close(compose_grids(ga, gb)[inside], expected[inside], atol=1e-5, rtol=0)


def test_iterating_similarity_is_one_resampling_of_composed_matrix():
    sim = _models()[0]
    _perturb(sim, 0.3)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        first = sim(x)
        second = sim(first.image)
        twice = sim(x, iters=2)
    homogeneous = torch.cat(
        [first.similarity_matrix, torch.tensor([[[0.0, 0.0, 1.0]]]).expand(2, 1, 3)], 1
    )
    composed = homogeneous @ torch.cat([second.similarity_matrix, homogeneous[:, 2:]], 1)
    torch.testing.assert_close(twice.similarity_matrix, composed[:, :2], atol=1e-5, rtol=0)
    once = warp(x, F.affine_grid(composed[:, :2], [2, 3, 16, 16], align_corners=False))
    torch.testing.assert_close(twice.image, once, atol=1e-5, rtol=0)
    assert not torch.allclose(twice.similarity_matrix, first.similarity_matrix, atol=1e-3)


@pytest.mark.parametrize("index", [0, 2])
def test_flipped_grid_samples_original_input(index):
    model = _models()[index]
    for stn in (model,) if index == 0 else (model.similarity, model.flow):
        _perturb(stn, 0.3)
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    want = torch.tensor([True, False, True])
    with torch.no_grad():
        mirrored = model(x.flip(-1))
        plain = model(x)
        target = torch.where(want[:, None, None, None], mirrored.image, plain.image)
        out = model(x, flips=True, target=target)
    assert out.flipped.tolist() == want.tolist()
    torch.testing.assert_close(out.image, target, atol=1e-6, rtol=0)
    torch.testing.assert_close(warp(x, out.grid, model.padding_mode), out.image, atol=1e-5, rtol=0)
    if out.similarity_matrix is not None and index == 0:
        regrid = F.affine_grid(out.similarity_matrix, [3, 3, 16, 16], align_corners=False)
        torch.testing.assert_close(regrid, out.grid, atol=1e-5, rtol=0)


def test_flip_selection_by_callable_and_default():
    sim, _, composed = _models()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        out = sim(
            x, flips=True, flip_cost=lambda o: -o.grid[:, 0, 0, 0]
        )  # mirrored: top-left at x > 0
    assert out.flipped.all()
    with pytest.raises(ValueError, match="flip_cost"):
        sim(x, flips=True)
    _perturb(composed.flow, 0.3)
    with torch.no_grad():
        out = composed(x, flips=True)
        tv = total_variation_huber(composed(x).flow, reduction="none")
        tv_mirrored = total_variation_huber(composed(x.flip(-1)).flow, reduction="none")
    assert out.flipped.tolist() == (tv_mirrored < tv).tolist()


def test_gradients_reach_both_heads_and_trunks():
    composed = _models()[2]
    _perturb(composed.similarity, 0.05)
    _perturb(composed.flow, 0.05)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    out = composed(x)
    loss = (out.image - x.flip(-1)).pow(2).mean() + total_variation_huber(out.flow)
    loss.backward()
    for stn in (composed.similarity, composed.flow):
        assert stn.head[-1].weight.grad.abs().sum() > 0
        assert stn.trunk.layers[0].weight.grad.abs().sum() > 0


def test_output_size_and_source_resolution():
    flow = FlowTransformer(**{**TINY, "padding_mode": "border"}, flow_size=4, output_size=(12, 10))
    x = torch.rand(1, 3, 32, 32)
    out = flow(F.interpolate(x, size=16), source=x)
    assert out.image.shape == (1, 3, 12, 10) and out.grid.shape == (1, 12, 10, 2)
    torch.testing.assert_close(out.image, warp(x, identity_grid(1, 12, 10), "border"))


def test_bad_padding_mode_is_rejected():
    with pytest.raises(ValueError, match="padding_mode"):
        SimilarityTransformer(**{**TINY, "padding_mode": "wrap"})


def test_a_nan_grid_is_an_error_naming_no_training_key():
    """Raised by congeal/propagate/pck too, which have no optim: training adds its keys."""
    nan = torch.full((1, 4, 4, 2), float("nan"))
    with pytest.raises(NonFiniteError, match="sampling grid holds NaN or inf") as err:
        warp(torch.zeros(1, 3, 4, 4), nan)
    assert "optim." not in str(err.value)
