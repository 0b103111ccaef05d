"""``common.data.digits``: the embedded default data, loaded and split in one place for all
packages."""

from __future__ import annotations

import numpy as np
import torch

from common.data.digits import digits_split, load_digits_arrays, load_digits_images


def test_the_digits_are_sklearn_s_in_each_range():
    arrays, labels = load_digits_arrays()
    assert arrays.shape == (1797, 8, 8) and arrays.dtype == np.float32
    assert arrays.min() == 0.0 and arrays.max() == 1.0 and set(labels.tolist()) == set(range(10))
    images, tensor_labels = load_digits_images()
    assert images.shape == (1797, 1, 8, 8) and images.min() == -1 and images.max() == 1
    torch.testing.assert_close(images[:, 0], torch.from_numpy(arrays) * 2 - 1, rtol=0, atol=0)
    assert torch.equal(tensor_labels, torch.from_numpy(labels))
    big, _ = load_digits_images(16)
    assert big.shape == (1797, 1, 16, 16) and big.min() >= -1 and big.max() <= 1


def test_the_split_is_deterministic_disjoint_and_complete():
    train, held = digits_split(1797, 0.2, seed=0)
    assert len(held) == 359 and len(train) == 1438
    assert not set(train) & set(held) and sorted([*train, *held]) == list(range(1797))
    again, _ = digits_split(1797, 0.2, seed=0)
    other, _ = digits_split(1797, 0.2, seed=1)
    assert np.array_equal(train, again) and not np.array_equal(train, other)
