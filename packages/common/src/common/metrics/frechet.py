"""Fréchet distance between Gaussians fitted to features, and the statistics it is computed from.

FID (Heusel et al. 2017, "GANs trained by a two time-scale update rule converge to a local Nash
equilibrium") fits a Gaussian ``N(mu, Sigma)`` to feature vectors of each image set and reports

    d^2 = ||mu_1 - mu_2||^2 + Tr(Sigma_1 + Sigma_2 - 2 (Sigma_1 Sigma_2)^{1/2}).

:func:`frechet_distance` follows ADM's evaluator (``guided-diffusion/evaluations/evaluator.py``)
and pytorch-fid line by line by default (``scipy.linalg.sqrtm`` in float64, ``eps * I`` added to
both covariances when the product is singular, real part kept); the thesis (Sec. 2.5) reports
FID-50K and sFID computed that way. ``method="eigh"`` gives the same number through two symmetric
eigendecompositions (much faster for 2048-d features on a CPU).
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from common.checkpoint import atomic_write_bytes

ArrayLike = np.ndarray | torch.Tensor


def _as_float64(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _trace_sqrt_product_sqrtm(sigma1: np.ndarray, sigma2: np.ndarray, eps: float) -> float:
    """``Tr((Sigma_1 Sigma_2)^{1/2})`` exactly as ADM's evaluator and pytorch-fid compute it."""
    from scipy import linalg

    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        warnings.warn(
            f"fid calculation produces singular product; adding {eps} to diagonal of cov estimates",
            stacklevel=3,
        )
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            m = np.max(np.abs(covmean.imag))
            raise ValueError(f"Imaginary component {m} in sqrtm(sigma1 @ sigma2)")
        covmean = covmean.real
    return float(np.trace(covmean))


def _trace_sqrt_product_eigh(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Same trace via ``Sigma_1 Sigma_2 ~ Sigma_1^{1/2} Sigma_2 Sigma_1^{1/2}`` (equal spectra).

    Both factors are symmetric PSD, so the eigenvalues of the product are real and nonnegative
    (tiny negative round-off is clipped); no ``eps`` fallback is needed.
    """
    w, v = np.linalg.eigh((sigma1 + sigma1.T) / 2)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = root1 @ sigma2 @ root1
    eig = np.linalg.eigvalsh((inner + inner.T) / 2)
    return float(np.sqrt(np.clip(eig, 0, None)).sum())


def frechet_distance(
    mu1: ArrayLike,
    sigma1: ArrayLike,
    mu2: ArrayLike,
    sigma2: ArrayLike,
    eps: float = 1e-6,
    method: Literal["sqrtm", "eigh"] = "sqrtm",
) -> float:
    """Fréchet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)`` in float64.

    ``method="sqrtm"`` reproduces ADM's evaluator / pytorch-fid (Heusel et al. 2017, Eq. 6);
    ``method="eigh"`` computes the same trace from symmetric eigendecompositions (faster, no
    complex round-off; agrees to about 1e-8 relative on well-conditioned covariances).
    """
    mu1, mu2 = np.atleast_1d(_as_float64(mu1)), np.atleast_1d(_as_float64(mu2))
    sigma1, sigma2 = np.atleast_2d(_as_float64(sigma1)), np.atleast_2d(_as_float64(sigma2))
    if mu1.shape != mu2.shape:
        raise ValueError(f"mean vectors have different lengths: {mu1.shape} vs {mu2.shape}")
    if sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0], mu1.shape[0]):
        raise ValueError(
            f"covariances {sigma1.shape} and {sigma2.shape} do not match means {mu1.shape}"
        )
    diff = mu1 - mu2
    if method == "sqrtm":
        tr_covmean = _trace_sqrt_product_sqrtm(sigma1, sigma2, eps)
    elif method == "eigh":
        tr_covmean = _trace_sqrt_product_eigh(sigma1, sigma2)
    else:
        raise ValueError(f"unknown method {method!r}: use 'sqrtm' or 'eigh'")
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


@dataclass
class FeatureStats:
    """Mean and covariance of feature vectors (float64), optionally with the raw features.

    The raw ``features`` ``[N, D]`` are only needed for precision/recall; precomputed reference
    statistics (ADM's reference batches, pytorch-fid's ``.npz`` files) hold only ``mu``/``sigma``.
    ``save``/``load`` use ``.npz`` keys ``mu``, ``sigma`` and ``features`` (when kept); ``prefix``
    and ``suffix`` select other key sets in the same file, e.g. ADM's sFID keys ``mu_s``/``sigma_s``
    are ``suffix="_s"``.
    """

    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray | None = None

    @property
    def dim(self) -> int:
        return int(self.mu.shape[0])

    @classmethod
    def from_features(cls, features: ArrayLike, keep_features: bool = False) -> FeatureStats:
        """Fit the Gaussian: sample mean and unbiased covariance (``np.cov``, as ADM does)."""
        if isinstance(features, torch.Tensor):
            features = features.detach().cpu().numpy()
        features = np.asarray(features)
        if features.ndim != 2 or features.shape[0] < 2:
            raise ValueError(
                f"need at least 2 feature vectors [N, D] to fit a Gaussian, got {features.shape}"
            )
        f64 = features.astype(np.float64)
        mu = f64.mean(axis=0)
        sigma = np.cov(f64, rowvar=False)
        kept = features.astype(np.float32) if keep_features else None
        return cls(mu=mu, sigma=np.atleast_2d(sigma), features=kept)

    def to_arrays(self, suffix: str = "") -> dict[str, np.ndarray]:
        arrays = {f"mu{suffix}": self.mu, f"sigma{suffix}": self.sigma}
        if self.features is not None:
            arrays[f"features{suffix}"] = self.features
        return arrays

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``mu``, ``sigma`` (and ``features``) to ``path`` atomically."""
        return save_stats_npz(path, self.to_arrays())

    @classmethod
    def load(cls, path: str | os.PathLike, suffix: str = "") -> FeatureStats:
        """Read ``mu{suffix}``, ``sigma{suffix}`` and, when present, ``features{suffix}``."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"statistics file not found: {path}")
        with np.load(path) as data:
            keys = set(data.files)
            if f"mu{suffix}" not in keys or f"sigma{suffix}" not in keys:
                raise KeyError(
                    f"{path} has no 'mu{suffix}'/'sigma{suffix}' arrays (found {sorted(keys)})"
                )
            feats = data[f"features{suffix}"] if f"features{suffix}" in keys else None
            return cls(
                mu=data[f"mu{suffix}"].astype(np.float64),
                sigma=np.atleast_2d(data[f"sigma{suffix}"].astype(np.float64)),
                features=feats,
            )


def save_stats_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> Path:
    """``np.savez`` to ``path`` atomically (temporary file + rename)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(buffer.getvalue(), path)
    return Path(path)
