"""Least-squares congealing baseline and keypoint transfer through congealed space."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gangealing.data.synthetic import SimilarityWarpDataset, all_pairs
from gangealing.eval.congealing_baseline import (
    congeal,
    gaussian_blur,
    no_alignment_transfer,
    pixel_variance,
    similarity_thetas,
    theta_from_grid,
    transfer_keypoints_via_congealing,
)
from gangealing.eval.pck import pck


@pytest.fixture(scope="module")
def small_set() -> SimilarityWarpDataset:
    return SimilarityWarpDataset(
        "astronaut",
        size=32,
        num_images=16,
        max_rotation_deg=20,
        scale_range=(0.9, 1.1),
        max_shift=0.1,
        num_keypoints=12,
        seed=0,
    )


def _pck_over_pairs(data: SimilarityWarpDataset, transfer) -> dict:
    pairs = torch.tensor(all_pairs(len(data)))
    a, b = pairs[:, 0], pairs[:, 1]
    pred = transfer(a, b)
    visible = data.visible[a] & data.visible[b]
    return pck(pred, data.keypoints[b], visible, torch.full((len(pairs),), float(data.size)))


def test_congealing_reduces_variance_and_beats_no_alignment(small_set):
    result = congeal(small_set.images, steps_per_stage=60, blur_sigmas=(2.0, 1.0, 0.5))
    assert result.thetas.shape == (16, 2, 3) and result.grids.shape == (16, 32, 32, 2)
    assert result.congealed.shape == small_set.images.shape
    before = pixel_variance(small_set.images, margin=0.1)
    after = pixel_variance(result.congealed, margin=0.1)
    # observed: 0.154 -> 0.00055
    assert after < 0.05 * before
    assert result.losses[-1] < 0.05 * result.losses[0]
    for params in (result.angles, result.log_scales):
        assert abs(float(params.mean())) < 1e-5
    none = _pck_over_pairs(small_set, lambda a, b: no_alignment_transfer(small_set.keypoints[a]))
    congealed = _pck_over_pairs(
        small_set,
        lambda a, b: transfer_keypoints_via_congealing(
            small_set.keypoints[a], result.thetas[a], result.thetas[b], size_a=32
        ),
    )
    # observed: no alignment 35.8 / 10.3 / 1.3, congealing 100 / 100 / 100 (PCK@0.1/0.05/0.01)
    assert none["pck@0.1"] < 50
    assert congealed["pck@0.1"] >= 95 and congealed["pck@0.1"] >= none["pck@0.1"] + 40
    assert congealed["pck@0.05"] >= 90


def test_transfer_with_ground_truth_alignment_is_exact(small_set):
    a, b = torch.tensor([0, 3, 7]), torch.tensor([5, 1, 2])
    pred = transfer_keypoints_via_congealing(
        small_set.keypoints[a],
        small_set.alignment_thetas[a],
        small_set.alignment_thetas[b],
        size_a=32,
    )
    torch.testing.assert_close(pred, small_set.keypoints[b], atol=1e-4, rtol=0)


def test_dense_grids_give_the_same_transfer_as_thetas():
    thetas = similarity_thetas(
        torch.tensor([0.3, -0.2]), torch.tensor([0.1, -0.05]), torch.tensor([[0.1, 0.0], [0, -0.2]])
    )
    grids = F.affine_grid(thetas, [2, 1, 24, 24], align_corners=False)
    torch.testing.assert_close(theta_from_grid(grids).float(), thetas, atol=1e-6, rtol=0)
    points = torch.rand(1, 5, 2) * 23
    by_theta = transfer_keypoints_via_congealing(points, thetas[:1], thetas[1:], size_a=24)
    by_grid = transfer_keypoints_via_congealing(points, grids[:1], grids[1:])
    torch.testing.assert_close(by_theta, by_grid, atol=1e-4, rtol=0)
    back = transfer_keypoints_via_congealing(by_theta, thetas[1:], thetas[:1], size_a=24)
    torch.testing.assert_close(back, points, atol=1e-4, rtol=0)


def test_transfer_between_different_image_sizes():
    identity = torch.eye(2, 3)[None]
    points = torch.tensor([[[0.0, 0.0], [15.0, 7.0]]])
    moved = transfer_keypoints_via_congealing(points, identity, identity, size_a=16, size_b=32)
    torch.testing.assert_close(moved, torch.tensor([[[0.5, 0.5], [30.5, 14.5]]]))
    torch.testing.assert_close(no_alignment_transfer(points, 16, 32), moved)
    assert torch.equal(no_alignment_transfer(points), points)


def test_building_blocks():
    assert torch.equal(
        similarity_thetas(torch.zeros(2), torch.zeros(2), torch.zeros(2, 2))[0], torch.eye(2, 3)
    )
    constant = torch.full((1, 3, 16, 16), 0.25)
    torch.testing.assert_close(gaussian_blur(constant, 2.0), constant)
    noise = torch.randn(1, 1, 16, 16)
    assert torch.equal(gaussian_blur(noise, 0.0), noise)
    assert gaussian_blur(noise, 1.5).std() < 0.5 * noise.std()


def test_errors_say_what_to_do():
    with pytest.raises(ValueError, match="pass size_a"):
        transfer_keypoints_via_congealing(
            torch.zeros(1, 2, 2), torch.eye(2, 3)[None], torch.eye(2, 3)[None]
        )
    with pytest.raises(ValueError, match=r"expected affine warps \[N, 2, 3\]"):
        transfer_keypoints_via_congealing(
            torch.zeros(1, 2, 2), torch.eye(3)[None], torch.eye(3)[None], size_a=8
        )
    with pytest.raises(ValueError, match=r"congeal needs images \[N >= 2"):
        congeal(torch.zeros(1, 3, 8, 8))
