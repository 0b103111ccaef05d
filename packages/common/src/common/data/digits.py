"""scikit-learn's digits, the embedded default data of every package's demo (1,797 real 8x8
handwritten digits, 10 classes, shipped inside scikit-learn: nothing to download)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def load_digits(image_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``[1797, 1, S, S]`` in [-1, 1] (bilinear resize for ``S != 8``) and labels."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 8.0 - 1.0).unsqueeze(1)
    if image_size != 8:
        x = F.interpolate(x, size=image_size, mode="bilinear", align_corners=False).clamp(-1, 1)
    return x, torch.from_numpy(digits.target.astype(np.int64))


def digits_split(
    num: int = 1797, holdout_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (train, held-out) index split: a seeded permutation, both parts sorted."""
    order = np.random.default_rng(seed).permutation(num)
    n_holdout = int(round(num * holdout_fraction))
    return np.sort(order[n_holdout:]), np.sort(order[:n_holdout])
