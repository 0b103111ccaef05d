"""PCK-Transfer metric (thesis Sec. 4.4.2) on hand-computed cases."""

from __future__ import annotations

import json
import math

import pytest
import torch

from gangealing.data.datasets import (
    CUB_FLIP_PERMUTATION,
    CUB_PART_NAMES,
    bbox_threshold,
    image_threshold,
)
from gangealing.eval.pck import (
    combine_pck,
    flip_keypoints,
    pck,
    write_pck_json,
)


def _offset(errors: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets at the origin and predictions displaced along x by ``errors`` (one pair)."""
    target = torch.zeros(1, len(errors), 2)
    pred = target.clone()
    pred[0, :, 0] = torch.tensor(errors)
    return pred, target


def test_all_correct_is_100_percent():
    target = torch.rand(3, 5, 2) * 100
    result = pck(target.clone(), target, torch.ones(3, 5, dtype=torch.bool), torch.full((3,), 50.0))
    assert result["pck@0.1"] == result["pck@0.05"] == result["pck@0.01"] == 100.0
    assert result["num_visible"] == 15 and result["num_pairs"] == 3


def test_half_correct_hand_computed():
    # threshold 100 px: radii 10, 5 and 1 px; a distance equal to the radius counts as correct
    pred, target = _offset([0.0, 5.0, 20.0, 50.0])
    result = pck(pred, target, torch.ones(1, 4, dtype=torch.bool), torch.tensor([100.0]))
    assert result["pck@0.1"] == 50.0 and result["correct@0.1"] == 2
    assert result["pck@0.05"] == 50.0
    assert result["pck@0.01"] == 25.0


def test_invisible_keypoints_are_ignored():
    pred, target = _offset([0.0, 0.0, 80.0, 90.0])
    visible = torch.tensor([[True, True, False, False]])
    result = pck(pred, target, visible, torch.tensor([100.0]))
    assert result["pck@0.1"] == 100.0 and result["num_visible"] == 2


def test_keypoint_must_be_visible_in_both_images():
    pred, target = _offset([0.0, 0.0, 80.0])
    target_visible = torch.tensor([[True, True, True]])
    source_visible = torch.tensor([[True, False, False]])
    result = pck(pred, target, target_visible, 100.0, visible_source=source_visible)
    assert result["num_visible"] == 1 and result["pck@0.1"] == 100.0


def test_thresholds_are_per_pair():
    # the same 8 px error is correct under a 100 px scale (radius 10) but not under 50 (radius 5)
    target = torch.zeros(2, 1, 2)
    pred = target + torch.tensor([8.0, 0.0])
    result = pck(pred, target, torch.ones(2, 1, dtype=torch.bool), torch.tensor([100.0, 50.0]))
    assert result["pck@0.1"] == 50.0


def test_no_visible_keypoint_gives_nan_and_combine_merges_counts():
    pred, target = _offset([0.0, 30.0])
    empty = pck(pred, target, torch.zeros(1, 2, dtype=torch.bool), torch.tensor([100.0]))
    assert math.isnan(empty["pck@0.1"]) and empty["num_visible"] == 0
    full = pck(pred, target, torch.ones(1, 2, dtype=torch.bool), torch.tensor([100.0]))
    merged = combine_pck([empty, full, full])
    assert merged["pck@0.1"] == 50.0 and merged["num_visible"] == 4 and merged["num_pairs"] == 3


def test_thresholds_from_boxes_and_image_sizes():
    boxes = torch.tensor([[10.0, 20.0, 50.0, 30.0], [0.0, 0.0, 5.0, 12.0]])
    assert bbox_threshold(boxes).tolist() == [40.0, 12.0]
    assert image_threshold([[256, 200], [100, 300]]).tolist() == [256.0, 300.0]
    with pytest.raises(ValueError, match=r"\(x1, y1, x2, y2\)"):
        bbox_threshold([[10.0, 0.0, 5.0, 4.0]])


def test_shape_errors_say_what_is_expected():
    with pytest.raises(ValueError, match=r"\[N, K, 2\]"):
        pck(torch.zeros(2, 3, 2), torch.zeros(2, 4, 2), torch.ones(2, 3, dtype=torch.bool), 1.0)
    with pytest.raises(ValueError, match=r"thresholds must be \[N\]"):
        pck(torch.zeros(2, 3, 2), torch.zeros(2, 3, 2), torch.ones(2, 3, dtype=torch.bool), [1.0])


def test_flip_mirrors_pixel_centres_and_matches_image_flip():
    image = torch.zeros(1, 6, 10)
    image[0, 2, 3] = 1.0
    points = torch.tensor([[[3.0, 2.0]]])
    flipped, _ = flip_keypoints(points, torch.ones(1, 1, dtype=torch.bool), width=10)
    x, y = flipped[0, 0].long().tolist()
    assert torch.flip(image, dims=[-1])[0, y, x] == 1.0
    assert flipped[0, 0].tolist() == [6.0, 2.0]


def test_flip_with_cub_permutation_is_an_involution():
    points = torch.rand(4, 15, 2) * 64
    visible = torch.rand(4, 15) > 0.3
    once, once_visible = flip_keypoints(points, visible, 64, CUB_FLIP_PERMUTATION)
    twice, twice_visible = flip_keypoints(once, once_visible, 64, CUB_FLIP_PERMUTATION)
    torch.testing.assert_close(twice, points)
    assert torch.equal(twice_visible, visible)
    left_eye, right_eye = CUB_PART_NAMES.index("left eye"), CUB_PART_NAMES.index("right eye")
    assert once_visible[:, right_eye].tolist() == visible[:, left_eye].tolist()
    assert once[:, right_eye, 0].tolist() == (63 - points[:, left_eye, 0]).tolist()


def test_flip_rejects_a_non_permutation():
    with pytest.raises(ValueError, match="permutation must reorder"):
        flip_keypoints(torch.zeros(1, 3, 2), torch.ones(1, 3, dtype=torch.bool), 8, [0, 0, 1])


def test_write_pck_json_round_trip(tmp_path):
    pred, target = _offset([0.0, 30.0])
    result = pck(pred, target, torch.ones(1, 2, dtype=torch.bool), torch.tensor([100.0]))
    result["thresholds"] = torch.tensor([1.5, float("nan")])
    path = tmp_path / "out" / "pck.json"
    write_pck_json(path, result)
    loaded = json.loads(path.read_text())
    assert loaded["pck@0.1"] == 50.0 and loaded["correct@0.1"] == 1
    assert loaded["thresholds"] == [1.5, None]
    assert [p.name for p in path.parent.iterdir()] == ["pck.json"]
