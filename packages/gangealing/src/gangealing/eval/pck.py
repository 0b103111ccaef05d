"""PCK-Transfer: percentage of correctly transferred keypoints (thesis Sec. 4.4.2).

Given a source image x_A, a target image x_B and ground-truth keypoints for both, PCK-Transfer is
the percentage of keypoints transferred from x_A to x_B that land within ``alpha * threshold``
pixels of the ground-truth keypoints in x_B. The per-pair distance scale ``threshold`` is

- SPair-71k (``alpha_bbox`` rule): ``max(H_bbox, W_bbox)`` of the object box in the *target*
  image, see :func:`gangealing.data.datasets.bbox_threshold`;
- CUB: ``max(H, W)`` of the target image, see :func:`gangealing.data.datasets.image_threshold`.

Only keypoints visible in both images count. When the Spatial Transformer flips one image of a
pair, predictions for keypoints with a left/right distinction are permuted
(:func:`flip_keypoints`).

Conventions: keypoints are pixel coordinates ``(x, y)`` with pixel centres at integer positions,
tensors ``[N, K, 2]`` with a boolean visibility mask ``[N, K]``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

DEFAULT_ALPHAS: tuple[float, ...] = (0.1, 0.05, 0.01)


def _key(alpha: float) -> str:
    return f"pck@{alpha:g}"


def pck(
    pred: torch.Tensor,
    target: torch.Tensor,
    visible: torch.Tensor,
    thresholds: torch.Tensor | float,
    alpha: Iterable[float] = DEFAULT_ALPHAS,
    visible_source: torch.Tensor | None = None,
) -> dict[str, float | int]:
    """PCK-Transfer at each ``alpha`` (thesis Sec. 4.4.2).

    Args:
        pred: transferred keypoints ``[N, K, 2]`` in target-image pixels.
        target: ground-truth target keypoints ``[N, K, 2]``.
        visible: ``[N, K]`` bool, keypoint annotated in the target (and, unless
            ``visible_source`` is given, also in the source).
        thresholds: ``[N]`` per-pair distance scale (``data.datasets.bbox_threshold``,
            ``image_threshold``) or one float for all pairs.
        alpha: fractions of the threshold within which a transfer counts as correct.
        visible_source: optional ``[N, K]`` source visibility, and-ed with ``visible``.

    Returns:
        ``{"pck@0.1": percent, ..., "correct@0.1": count, ..., "num_visible": count,
        "num_pairs": N}``. Percentages are NaN when no keypoint is visible; merge batches with
        :func:`combine_pck`.
    """
    pred = torch.as_tensor(pred, dtype=torch.float32)
    target = torch.as_tensor(target, dtype=torch.float32)
    if pred.shape != target.shape or pred.ndim != 3 or pred.shape[-1] != 2:
        raise ValueError(
            f"pred and target must both be [N, K, 2]; got {tuple(pred.shape)} and "
            f"{tuple(target.shape)}"
        )
    mask = torch.as_tensor(visible).bool()
    if mask.shape != pred.shape[:2]:
        raise ValueError(f"visible must be [N, K] = {tuple(pred.shape[:2])}, got {mask.shape}")
    if visible_source is not None:
        mask = mask & torch.as_tensor(visible_source).bool()
    scale = torch.as_tensor(thresholds, dtype=torch.float32)
    if scale.ndim == 0:
        scale = scale.expand(pred.shape[0])
    if scale.shape != (pred.shape[0],):
        raise ValueError(f"thresholds must be [N] = [{pred.shape[0]}], got {tuple(scale.shape)}")
    distance = torch.linalg.vector_norm(pred - target, dim=-1)
    num_visible = int(mask.sum())
    results: dict[str, float | int] = {}
    for a in alpha:
        correct = (distance <= a * scale[:, None]) & mask
        count = int(correct.sum())
        results[_key(a)] = 100.0 * count / num_visible if num_visible else math.nan
        results[f"correct@{a:g}"] = count
    results["num_visible"] = num_visible
    results["num_pairs"] = int(pred.shape[0])
    return results


def combine_pck(results: Iterable[dict[str, float | int]]) -> dict[str, float | int]:
    """Merge :func:`pck` results of several batches by summing their counts."""
    results = list(results)
    if not results:
        raise ValueError("combine_pck needs at least one pck() result")
    total: dict[str, float | int] = {}
    for key in results[0]:
        if key.startswith("correct@") or key.startswith("num_"):
            total[key] = sum(int(r[key]) for r in results)
    visible = int(total["num_visible"])
    for key in list(total):
        if key.startswith("correct@"):
            alpha = key.split("@", 1)[1]
            total[f"pck@{alpha}"] = 100.0 * int(total[key]) / visible if visible else math.nan
    return total


def flip_keypoints(
    points: torch.Tensor,
    visible: torch.Tensor,
    width: int | float,
    permutation: Sequence[int] | torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror keypoints horizontally and swap left/right indices (thesis Sec. 4.4.2).

    With pixel centres at integers, column ``x`` of an image of width ``W`` mirrors to
    ``W - 1 - x``. Keypoint ``k`` of the result is keypoint ``permutation[k]`` of the input, so a
    left eye becomes the right eye (e.g. ``CUB_FLIP_PERMUTATION``). ``points`` is ``[..., K, 2]``
    and ``visible`` ``[..., K]``; returns the flipped ``(points, visible)``.
    """
    points = torch.as_tensor(points)
    visible = torch.as_tensor(visible)
    num_keypoints = points.shape[-2]
    if permutation is None:
        index = torch.arange(num_keypoints)
    else:
        index = torch.as_tensor(permutation, dtype=torch.long)
        if sorted(index.tolist()) != list(range(num_keypoints)):
            raise ValueError(
                f"permutation must reorder 0..{num_keypoints - 1} (one entry per keypoint); "
                f"got {index.tolist()}"
            )
    flipped = points.clone()
    flipped[..., 0] = (width - 1) - flipped[..., 0]
    return flipped[..., index, :], visible[..., index]
