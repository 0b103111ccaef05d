"""Image folder, SPair-71k and CUB-200-2011 readers on tiny fixtures in their real layouts."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from gangealing.data.datasets import (
    CUB_FLIP_PERMUTATION,
    CUB_PART_NAMES,
    CUBPairs,
    ImageFolder,
    SPairPairs,
)

# ---------------------------------------------------------------------------- ImageFolder


def _save(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)


def test_image_folder_is_sorted_recursive_resized_and_center_cropped(tmp_path):
    halves = np.zeros((20, 40, 3), np.uint8)  # W=40, H=20: the central 20x20 is half black
    halves[:, 20:] = 255
    _save(tmp_path / "b" / "2.png", halves)
    _save(tmp_path / "a.png", np.full((30, 30, 3), 128, np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    folder = ImageFolder(tmp_path, size=10)
    assert [p.relative_to(tmp_path).as_posix() for p in folder.files] == ["a.png", "b/2.png"]
    image = folder[1]
    assert image.shape == (3, 10, 10) and image.dtype == torch.float32
    assert image[:, :, :4].max() == -1.0 and image[:, :, 6:].min() == 1.0  # edge: antialiasing
    assert abs(float(folder[0].mean()) - (128 / 127.5 - 1)) < 1e-6


def test_image_folder_converts_grayscale_and_rgba_with_a_warning(tmp_path, caplog):
    _save(tmp_path / "gray.png", np.full((8, 8), 255, np.uint8), mode="L")
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 3] = 255
    _save(tmp_path / "rgba.png", rgba)
    with caplog.at_level(logging.WARNING, logger="gangealing.data.datasets"):
        folder = ImageFolder(tmp_path, size=4)
        assert folder[0].shape == (3, 4, 4) and folder[0].min() == 1.0
        assert folder[1].max() == -1.0
    assert "converting L images to RGB" in caplog.text
    assert "converting RGBA images to RGB" in caplog.text


def test_image_folder_strict_channels_error_names_the_file(tmp_path):
    _save(tmp_path / "logo.png", np.zeros((8, 8, 4), np.uint8))
    folder = ImageFolder(tmp_path, size=4, strict_channels=True)
    with pytest.raises(ValueError) as err:
        folder[0]
    message = str(err.value)
    assert "expected RGB images with 3 channels, got 4 (RGBA) in" in message
    assert "logo.png" in message and "strict_channels=False" in message


def test_image_folder_empty_and_missing_folder_errors(tmp_path):
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(
        ValueError, match=r"no images found in .*\(searched recursively for .*\.png"
    ):
        ImageFolder(tmp_path, size=4)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolder(tmp_path / "missing", size=4)


# ---------------------------------------------------------------------------- SPair-71k


def _white_square(width: int, height: int, x: int, y: int) -> np.ndarray:
    array = np.zeros((height, width, 3), np.uint8)
    array[y - 2 : y + 3, x - 2 : x + 3] = 255
    return array


def _spair_pair(name: str, src: str, trg: str, category: str, **fields) -> dict:
    return {
        "filename": name,
        "src_imname": src,
        "trg_imname": trg,
        "category": category,
        "mirror": 0,
        **fields,
    }


def _write_spair(root: Path) -> None:
    images = root / "JPEGImages" / "cat"
    _save(images / "a.jpg", _white_square(40, 20, 10, 5))  # W=40, H=20
    _save(images / "b.jpg", _white_square(20, 30, 14, 20))  # W=20, H=30
    pairs = root / "PairAnnotation" / "test"
    pairs.mkdir(parents=True)
    first = _spair_pair(
        "000001-a-b:cat",
        "a.jpg",
        "b.jpg",
        "cat",
        kps_ids=["0", "3"],
        src_kps=[[10, 5], [30, 15]],
        trg_kps=[[14, 20], [5, 5]],
        src_bndbox=[4, 2, 36, 18],
        trg_bndbox=[2, 4, 18, 28],
        src_imsize=[40, 20, 3],
        trg_imsize=[20, 30, 3],
    )
    second = _spair_pair(
        "000002-b-a:cat",
        "b.jpg",
        "a.jpg",
        "cat",
        kps_ids=["5"],
        src_kps=[[14, 20]],
        trg_kps=[[10, 5]],
        src_bndbox=[2, 4, 18, 28],
        trg_bndbox=[4, 2, 36, 18],
    )
    other = _spair_pair(
        "000003-x-y:dog",
        "x.jpg",
        "y.jpg",
        "dog",
        kps_ids=[],
        src_kps=[],
        trg_kps=[],
        src_bndbox=[0, 0, 1, 1],
        trg_bndbox=[0, 0, 1, 1],
    )
    for pair in (first, second, other):
        (pairs / f"{pair['filename']}.json").write_text(json.dumps(pair))


def test_spair_pairs_scale_keypoints_boxes_and_threshold(tmp_path):
    _write_spair(tmp_path)
    data = SPairPairs(tmp_path, "cat", split="test", size=20)
    assert len(data) == 2 and data.num_keypoints == 6
    item = data[0]
    assert item["source_image"].shape == item["target_image"].shape == (3, 20, 20)
    # source W=40, H=20 padded to a 40x40 square (y0 = -10), scale 0.5: x' = (x - x0 + .5) / 2 - .5
    torch.testing.assert_close(item["source_keypoints"][0], torch.tensor([4.75, 7.25]))
    torch.testing.assert_close(item["source_bbox"], torch.tensor([1.75, 5.75, 17.75, 13.75]))
    assert item["visible"].tolist() == [True, False, False, True, False, False]
    # target W=20, H=30 padded to 30x30 (x0 = -5), scale 2/3; box 16x24 becomes 10.67x16
    torch.testing.assert_close(item["threshold"], torch.tensor(16.0))
    x, y = item["target_keypoints"][0].round().long().tolist()
    assert item["target_image"][:, y, x].min() > 0.5  # the keypoint sits on the white square
    x, y = item["source_keypoints"][0].round().long().tolist()
    assert item["source_image"][:, y, x].min() > 0.5
    assert item["pair_name"] == "000001-a-b:cat" and item["mirror"] == 0
    batch = next(iter(DataLoader(data, batch_size=2)))
    assert batch["source_keypoints"].shape == (2, 6, 2) and batch["threshold"].shape == (2,)


def test_spair_stretch_resize_scales_axes_separately(tmp_path):
    _write_spair(tmp_path)
    item = SPairPairs(tmp_path, "cat", size=20, resize="stretch")[0]
    torch.testing.assert_close(item["source_keypoints"][0], torch.tensor([4.75, 5.0]))


def test_spair_errors_name_the_missing_file_and_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"JPEGImages.*SPair-71k layout.*data\.root=<"):
        SPairPairs(tmp_path, "cat")
    _write_spair(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"PairAnnotation.val.*SPair-71k layout"):
        SPairPairs(tmp_path, "cat", split="val")
    with pytest.raises(FileNotFoundError, match=r"JPEGImages.bird"):
        SPairPairs(tmp_path, "bird")
    (tmp_path / "JPEGImages" / "cat" / "b.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"b\.jpg not found"):
        SPairPairs(tmp_path, "cat")[0]
    with pytest.raises(ValueError, match="split must be one of"):
        SPairPairs(tmp_path, "cat", split="testing")


# ---------------------------------------------------------------------------- CUB-200-2011


def _write_cub(root: Path) -> None:
    files = {1: "001.Sparrow/s1.jpg", 2: "001.Sparrow/s2.jpg", 3: "002.Wren/w1.jpg"}
    boxes = {1: (10, 5, 20, 10), 2: (0, 0, 30, 30), 3: (4, 4, 8, 8)}
    for name in files.values():
        _save(root / "images" / name, _white_square(40, 30, 20, 10))
    (root / "images.txt").write_text("".join(f"{i} {n}\n" for i, n in files.items()))
    (root / "train_test_split.txt").write_text("1 0\n2 0\n3 1\n")
    (root / "bounding_boxes.txt").write_text(
        "".join(f"{i} {x}.0 {y}.0 {w}.0 {h}.0\n" for i, (x, y, w, h) in boxes.items())
    )
    (root / "parts").mkdir()
    (root / "parts" / "parts.txt").write_text(
        "".join(f"{k + 1} {name}\n" for k, name in enumerate(CUB_PART_NAMES))
    )
    lines = []
    for image_id in files:
        for part in range(1, 16):
            visible = part % 2
            x, y = (20.0, 10.0) if visible else (0.0, 0.0)
            lines.append(f"{image_id} {part} {x} {y} {visible}\n")
    (root / "parts" / "part_locs.txt").write_text("".join(lines))


def test_cub_pairs_crop_to_the_box_and_use_image_size_threshold(tmp_path):
    _write_cub(tmp_path)
    data = CUBPairs(tmp_path, split="test", size=16, bbox_padding=1.0)
    assert data.image_ids == [1, 2] and data.pairs == [(1, 2), (2, 1)]
    item = data[0]
    assert item["source_id"] == 1 and item["target_id"] == 2
    assert item["source_image"].shape == (3, 16, 16)
    # box (10, 5, 20, 10) -> square window (10, 0, 20, 20), scale 0.8: (20, 10) -> (7.9, 7.9)
    torch.testing.assert_close(item["source_keypoints"][0], torch.tensor([7.9, 7.9]))
    torch.testing.assert_close(item["source_bbox"], torch.tensor([-0.1, 3.9, 15.9, 11.9]))
    assert item["source_keypoints"].shape == (15, 2)
    assert item["visible"].tolist() == [k % 2 == 0 for k in range(15)]
    assert float(item["threshold"]) == 16.0
    x, y = item["source_keypoints"][0].round().long().tolist()
    assert item["source_image"][:, y, x].min() > 0.5


def test_cub_pairs_whole_image_crop_explicit_pairs_and_sampling(tmp_path):
    _write_cub(tmp_path)
    item = CUBPairs(tmp_path, split="all", size=20, pairs=[(3, 1)], crop="image")[0]
    # 40x30 padded to 40x40 (y0 = -5), scale 0.5: (20, 10) -> (9.75, 7.25)
    torch.testing.assert_close(item["target_keypoints"][0], torch.tensor([9.75, 7.25]))
    sampled = CUBPairs(tmp_path, split="all", size=8, num_pairs=4, seed=3)
    assert len(sampled) == 4 and all(a != b for a, b in sampled.pairs)
    assert sampled.pairs == CUBPairs(tmp_path, split="all", size=8, num_pairs=4, seed=3).pairs
    with pytest.raises(ValueError, match="not in images.txt"):
        CUBPairs(tmp_path, pairs=[(1, 99)])


@pytest.mark.parametrize(
    "missing", ["images.txt", "train_test_split.txt", "bounding_boxes.txt", "parts/part_locs.txt"]
)
def test_cub_missing_files_name_the_file_and_layout(tmp_path, missing):
    _write_cub(tmp_path)
    (tmp_path / missing).unlink()
    with pytest.raises(FileNotFoundError, match=rf"{Path(missing).name} not found.*CUB-200-2011"):
        CUBPairs(tmp_path)


def test_cub_missing_image_names_the_file(tmp_path):
    _write_cub(tmp_path)
    (tmp_path / "images" / "001.Sparrow" / "s2.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"s2\.jpg not found.*CUB-200-2011 .*data\.root=<"):
        CUBPairs(tmp_path, size=8)[0]


def test_cub_flip_permutation_swaps_left_and_right_parts():
    assert sorted(CUB_FLIP_PERMUTATION) == list(range(15))
    for k, j in enumerate(CUB_FLIP_PERMUTATION):
        assert CUB_FLIP_PERMUTATION[j] == k
        name = CUB_PART_NAMES[k]
        expected = (
            name.replace("left", "right") if "left" in name else name.replace("right", "left")
        )
        assert CUB_PART_NAMES[j] == expected
