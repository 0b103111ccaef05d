"""``common.data.digits``: the embedded default data, loaded and split in one place for all
packages."""

from __future__ import annotations

import numpy as np
import torch

from common.data.digits import digits_split, load_digits
from common.data.images import IMAGE_EXTENSIONS, list_images


def test_the_digits_are_sklearn_s_in_each_range():
    from sklearn.datasets import load_digits as sklearn_digits

    raw = sklearn_digits()
    images, labels = load_digits()
    assert images.shape == (1797, 1, 8, 8) and images.dtype == torch.float32
    assert images.min() == -1 and images.max() == 1 and set(labels.tolist()) == set(range(10))
    expected = torch.from_numpy(raw.images / 16.0 * 2 - 1).float()
    torch.testing.assert_close(images[:, 0], expected, rtol=0, atol=0)
    assert torch.equal(labels, torch.from_numpy(raw.target))
    big, _ = load_digits(16)
    assert big.shape == (1797, 1, 16, 16) and big.min() >= -1 and big.max() <= 1


def test_the_split_is_deterministic_disjoint_and_complete():
    train, held = digits_split(1797, 0.2, seed=0)
    assert len(held) == 359 and len(train) == 1438
    assert not set(train) & set(held) and sorted([*train, *held]) == list(range(1797))
    again, _ = digits_split(1797, 0.2, seed=0)
    other, _ = digits_split(1797, 0.2, seed=1)
    assert np.array_equal(train, again) and not np.array_equal(train, other)


def test_one_image_lister_for_every_command(tmp_path):
    for name in ["b.PNG", "a.jpg", "sub/c.webp", "sub/d.tiff", "notes.txt", "e.jpeg.bak"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)] == [
        "a.jpg",
        "b.PNG",
        "sub/c.webp",
        "sub/d.tiff",
    ]
    assert [p.name for p in list_images(tmp_path, recursive=False)] == ["a.jpg", "b.PNG"]
    assert {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"} <= set(IMAGE_EXTENSIONS)
