"""Improved precision and recall (Kynkäänniemi et al. 2019), and the Inception Score formula.

Precision and recall estimate each distribution's manifold as the union of balls around its
feature vectors, each ball reaching the point's k-th nearest neighbour (k = 3, as in the paper,
ADM's evaluator and torch-fidelity):

    precision = mean_{fake f} [ exists real r: ||f - r|| <= NN_k(r, real) ]
    recall    = mean_{real r} [ exists fake f: ||r - f|| <= NN_k(f, fake) ]

Distances are computed in ``chunk_size x chunk_size`` tiles, so 50k x 50k sets never materialise
the full distance matrix (the running k smallest distances per row are kept instead).

The Inception Score (Salimans et al. 2016) is ``exp(E_x KL(p(y|x) || p(y)))`` over ``splits``
chunks, averaged; computed with ``torchmetrics.image.inception.InceptionScore`` from logits.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor


def _as_tensor(x: ArrayLike, device: torch.device | str | None) -> torch.Tensor:
    t = torch.as_tensor(x) if not isinstance(x, torch.Tensor) else x.detach()
    return t.to(device=device or t.device, dtype=torch.float32)


def knn_radii(features: torch.Tensor, k: int = 3, chunk_size: int = 10_000) -> torch.Tensor:
    """Distance of each row of ``features`` to its k-th nearest neighbour (itself excluded)."""
    n = features.shape[0]
    if n <= k:
        raise ValueError(f"need more than k={k} feature vectors for k-NN radii, got {n}")
    radii = []
    for rows in features.split(chunk_size):
        best = None
        for cols in features.split(chunk_size):
            d = torch.cdist(rows, cols)
            cand = d if best is None else torch.cat([best, d], dim=1)
            best = cand.topk(min(k + 1, cand.shape[1]), dim=1, largest=False).values
        # index 0 is the point itself (distance 0); index k is the k-th real neighbour
        radii.append(best[:, k])
    return torch.cat(radii)


def manifold_coverage(
    queries: torch.Tensor,
    support: torch.Tensor,
    radii: torch.Tensor,
    chunk_size: int = 10_000,
) -> float:
    """Fraction of ``queries`` inside at least one ball ``B(support_j, radii_j)``."""
    inside = []
    for rows in queries.split(chunk_size):
        hit = torch.zeros(rows.shape[0], dtype=torch.bool, device=rows.device)
        for cols, r in zip(support.split(chunk_size), radii.split(chunk_size), strict=True):
            hit |= (torch.cdist(rows, cols) <= r.unsqueeze(0)).any(dim=1)
        inside.append(hit)
    return torch.cat(inside).float().mean().item()


@torch.no_grad()
def precision_recall(
    real_features: ArrayLike,
    fake_features: ArrayLike,
    k: int = 3,
    chunk_size: int = 10_000,
    device: torch.device | str | None = None,
) -> tuple[float, float]:
    """Improved precision and recall of ``fake`` w.r.t. ``real`` (Kynkäänniemi et al. 2019).

    Returns ``(precision, recall)`` in [0, 1]. Features are ``[N, D]`` arrays or tensors; the
    computation runs on ``device`` (default: where ``real_features`` lives).
    """
    real = _as_tensor(real_features, device)
    fake = _as_tensor(fake_features, real.device)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"expected [N, D] feature matrices of equal D, got {tuple(real.shape)} and "
            f"{tuple(fake.shape)}"
        )
    precision = manifold_coverage(fake, real, knn_radii(real, k, chunk_size), chunk_size)
    recall = manifold_coverage(real, fake, knn_radii(fake, k, chunk_size), chunk_size)
    return precision, recall


@torch.no_grad()
def inception_score(logits: ArrayLike, splits: int = 10, seed: int = 0) -> float:
    """Inception Score ``exp(E_x KL(p(y|x) || p(y)))`` from classifier logits (Salimans et al.
    2016), mean over ``splits`` chunks, via torchmetrics' ``InceptionScore`` fed precomputed
    logits (its ``feature`` argument takes any module; here the identity). torchmetrics shuffles
    before splitting; ``seed`` makes that shuffle reproducible without touching the global RNG.
    """
    from torchmetrics.image.inception import InceptionScore

    x = _as_tensor(logits, "cpu").double()
    if x.ndim != 2 or x.shape[0] < splits:
        raise ValueError(
            f"need [N, classes] logits with N >= splits={splits}, got {tuple(x.shape)}"
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = InceptionScore(feature=torch.nn.Identity(), splits=splits)
    metric.update(x)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, _ = metric.compute()
    return float(mean)
