"""One entry point: score samples against a reference with the metrics of thesis Sec. 2.5.

Feature extraction makes one pass over the samples for every feature space requested; the
reference's statistics come from a precomputed ``.npz`` (``mu``/``sigma``, ADM's ``mu_s``/
``sigma_s``) or are computed from its images and cached on disk, keyed by the source (path, sizes,
mtimes) and the feature space (weights hash), so the next evaluation does not recompute them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from common.devices import pick_device
from common.metrics.digits import SPACE_KEY as DIGITS_SPACE_KEY
from common.metrics.digits import DigitsFeatureSpace
from common.metrics.frechet import FeatureStats, frechet_distance, save_stats_npz
from common.metrics.inception import (
    inception_space_key,
    load_inception,
    resolve_inception_weights,
)
from common.metrics.inputs import (
    ImageSource,
    default_cache_dir,
    iter_image_batches,
    load_npz_labels,
    npz_keys,
    source_fingerprint,
)
from common.metrics.precision_recall import inception_score, precision_recall

INCEPTION_METRICS = ("fid", "sfid", "is", "precision", "recall")
DIGITS_METRICS = ("fd_digits", "is_digits", "precision_digits", "recall_digits", "acc_digits")
NO_REFERENCE = ("is", "is_digits", "acc_digits")
SPACE_METRICS = {"inception": INCEPTION_METRICS, "digits": DIGITS_METRICS}
SPACE_PREFIX = {"inception": "", "digits": "_digits"}
# Fréchet distances: stats name -> metric name, per feature space
FD_METRICS = {"inception": {"pool": "fid", "spatial": "sfid"}, "digits": {"features": "fd_digits"}}
FeatureSpace = Literal["inception", "digits"]
Extractor = Callable[[np.ndarray], dict[str, np.ndarray]]
# stats kept per feature space, and the .npz key suffix each is stored under (ADM's layout)
STATS_KEYS = {"inception": {"pool": "", "spatial": "_s"}, "digits": {"features": ""}}
# which stats carry raw features for precision/recall
PR_STATS = {"inception": "pool", "digits": "features"}


def available_metrics() -> list[str]:
    """Names accepted by :func:`evaluate_images`."""
    return [*INCEPTION_METRICS, *DIGITS_METRICS]


def _check_metrics(metrics: list[str] | tuple[str, ...]) -> list[str]:
    names = list(dict.fromkeys(str(m) for m in metrics))
    if not names:
        raise ValueError(f"no metrics requested; choose from {available_metrics()}")
    unknown = [m for m in names if m not in available_metrics()]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; valid names: {available_metrics()}")
    return names


def _extractor(
    space: FeatureSpace,
    inception_weights: str | os.PathLike | None,
    cache_dir: str | os.PathLike | None,
    device: str,
) -> tuple[Extractor, str]:
    """The feature extractor of ``space`` and its cache key."""
    if space == "inception":
        weights = resolve_inception_weights(inception_weights)
        return load_inception(weights, device), inception_space_key(weights)
    return DigitsFeatureSpace.load(cache_dir, device), DIGITS_SPACE_KEY


def extract_features(
    source: ImageSource, extractors: dict[str, Extractor], batch_size: int = 64
) -> dict[str, dict[str, np.ndarray]]:
    """One pass over ``source``, every extractor seeing every batch: ``{space: {name: array}}``."""
    parts: dict[str, dict[str, list[np.ndarray]]] = {s: {} for s in extractors}
    for batch in iter_image_batches(source, batch_size):
        for space, fn in extractors.items():
            for name, arr in fn(batch).items():
                parts[space].setdefault(name, []).append(arr)
    if not any(parts.values()):
        raise ValueError("no images to evaluate: the source is empty")
    return {s: {n: np.concatenate(a) for n, a in d.items()} for s, d in parts.items()}


def _stats_from_features(
    space: str, feats: dict[str, np.ndarray], keep_features: bool
) -> dict[str, FeatureStats]:
    return {
        name: FeatureStats.from_features(feats[name], keep_features and name == PR_STATS[space])
        for name in STATS_KEYS[space]
    }


def _cache_path(source: Path, space_key: str, cache_dir: str | os.PathLike | None) -> Path:
    root = Path(cache_dir or default_cache_dir()).expanduser() / "reference_stats"
    return root / f"{source.stem}-{space_key}-{source_fingerprint(source)}.npz"


def _load_cached(path: Path, space: str, keep_features: bool) -> dict[str, FeatureStats] | None:
    if not path.is_file():
        return None
    try:
        stats = {n: FeatureStats.load(path, sfx) for n, sfx in STATS_KEYS[space].items()}
    except (KeyError, ValueError, OSError):
        return None
    if keep_features and stats[PR_STATS[space]].features is None:
        return None
    return stats


def reference_stats(
    source: ImageSource,
    feature_space: FeatureSpace = "inception",
    *,
    keep_features: bool = False,
    inception_weights: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 64,
    device: torch.device | str | None = None,
) -> dict[str, FeatureStats]:
    """Statistics of reference images in a feature space, cached on disk for path sources.

    ``feature_space="inception"`` gives ``{"pool", "spatial"}`` (FID, sFID); ``"digits"`` gives
    ``{"features"}``. ``keep_features`` also keeps the raw pool/digits features (for precision
    and recall). Folders and ``.npz`` files (``arr_0``) are cached under
    ``<cache_dir>/reference_stats/`` as ``.npz`` (ADM's key layout: ``mu``, ``sigma``,
    ``features``, ``mu_s``, ``sigma_s``), keyed by the source's path, file sizes and mtimes and the
    feature space; arrays are computed every time.
    """
    if feature_space not in STATS_KEYS:
        raise ValueError(f"unknown feature space {feature_space!r}: use 'inception' or 'digits'")
    dev = str(pick_device(device))
    extractor, space_key = _extractor(feature_space, inception_weights, cache_dir, dev)
    cache = None
    if not isinstance(source, np.ndarray | torch.Tensor):
        cache = _cache_path(Path(source).expanduser(), space_key, cache_dir)
        cached = _load_cached(cache, feature_space, keep_features)
        if cached is not None:
            return cached
    feats = extract_features(source, {feature_space: extractor}, batch_size)[feature_space]
    stats = _stats_from_features(feature_space, feats, keep_features)
    if cache is not None:
        arrays: dict[str, np.ndarray] = {}
        for name, sfx in STATS_KEYS[feature_space].items():
            arrays.update(stats[name].to_arrays(sfx))
        save_stats_npz(cache, arrays)
    return stats


def _reference_for_space(
    reference: ImageSource, space: FeatureSpace, wanted: set[str], want_pr: bool, **kw
) -> tuple[dict[str, FeatureStats], np.ndarray | None]:
    """Reference stats (``wanted`` names) and raw features for precision/recall (``want_pr``).

    Statistics stored in an ``.npz`` (``mu``/``sigma``, ``mu_s``/``sigma_s``) take precedence, as
    in ADM's evaluator; its images (``arr_0``) supply whatever else is needed.
    """
    pr = PR_STATS[space]
    path = None if isinstance(reference, np.ndarray | torch.Tensor) else Path(reference)
    if path is None or path.suffix != ".npz" or not path.is_file():
        stats = reference_stats(reference, space, keep_features=want_pr, **kw)
        return stats, stats[pr].features if want_pr else None
    keys = set(npz_keys(path))
    found: dict[str, FeatureStats] = {}
    if space == "inception":
        for name, sfx in STATS_KEYS[space].items():
            if {f"mu{sfx}", f"sigma{sfx}"} <= keys:
                found[name] = FeatureStats.load(path, sfx)
    missing = sorted(n for n in wanted if n not in found)
    raw = found[pr].features if pr in found else None
    if not missing and (raw is not None or not want_pr):
        return found, raw
    if "arr_0" not in keys:
        held = sorted(keys)
        if space == "digits":
            raise ValueError(
                f"digits metrics need reference images, but {path} holds only {held}: pass "
                "images (an .npz with arr_0, a folder or an array)"
            )
        if want_pr and raw is None:
            raise ValueError(
                f"precision/recall need the reference's raw features, but {path} holds only "
                f"statistics ({held}): pass reference images (an image folder, an .npz with "
                "arr_0 such as ADM's reference batches, or an array)"
            )
        raise ValueError(
            f"{path} lacks {missing} statistics (sfid needs mu_s/sigma_s) and has no images "
            f"(arr_0) to compute them from; it holds {held}"
        )
    computed = reference_stats(path, space, keep_features=want_pr, **kw)
    return {**computed, **found}, computed[pr].features if want_pr else None


def evaluate_images(
    samples: ImageSource,
    reference: ImageSource | None,
    metrics: list[str] | tuple[str, ...],
    *,
    labels: np.ndarray | torch.Tensor | None = None,
    inception_weights: str | os.PathLike | None = None,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    cache_dir: str | os.PathLike | None = None,
    k: int = 3,
    is_splits: int = 10,
    fd_method: Literal["sqrtm", "eigh"] = "sqrtm",
) -> dict[str, float]:
    """Score ``samples`` against ``reference``; returns ``{metric: value}`` for ``metrics``.

    See the package docstring for the metric names, input formats and caching.
    """
    names = _check_metrics(metrics)
    dev = str(pick_device(device))
    spaces = [s for s, group in SPACE_METRICS.items() if any(m in group for m in names)]
    need_ref = [m for m in names if m not in NO_REFERENCE]
    if need_ref and reference is None:
        raise ValueError(f"{need_ref} compare samples with a reference: pass reference=...")
    if labels is None and "acc_digits" in names:
        if isinstance(samples, str | Path) and Path(samples).suffix == ".npz":
            labels = load_npz_labels(samples)
        if labels is None:
            raise ValueError("acc_digits needs labels=<class of each sample>")
    extractors = {s: _extractor(s, inception_weights, cache_dir, dev)[0] for s in spaces}
    # the reference first: its errors (stats-only files, missing images) come before the long pass
    kw = dict(inception_weights=inception_weights, cache_dir=cache_dir, batch_size=batch_size)
    refs: dict[str, tuple[dict[str, FeatureStats], np.ndarray | None]] = {}
    for space in spaces:
        prefix = SPACE_PREFIX[space]
        want_pr = f"precision{prefix}" in names or f"recall{prefix}" in names
        wanted = {stats for stats, metric in FD_METRICS[space].items() if metric in names}
        refs[space] = ({}, None)
        if wanted or want_pr:
            refs[space] = _reference_for_space(reference, space, wanted, want_pr, device=dev, **kw)
    feats = extract_features(samples, extractors, batch_size)
    out: dict[str, float] = {}
    for space in spaces:
        prefix, f = SPACE_PREFIX[space], feats[space]
        ref, ref_raw = refs[space]
        for stats, metric in FD_METRICS[space].items():
            if metric in names:
                s, r = FeatureStats.from_features(f[stats]), ref[stats]
                out[metric] = frechet_distance(s.mu, s.sigma, r.mu, r.sigma, method=fd_method)
        if ref_raw is not None:
            p, r = precision_recall(ref_raw, f[PR_STATS[space]], k, device=dev)
            out[f"precision{prefix}"], out[f"recall{prefix}"] = p, r
        if f"is{prefix}" in names:
            out[f"is{prefix}"] = inception_score(f["logits"], is_splits)
        if space == "digits" and "acc_digits" in names:
            y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
            pred = f["logits"].argmax(1)
            if y.shape != pred.shape:
                raise ValueError(f"labels have shape {y.shape}, samples {pred.shape[0]} images")
            out["acc_digits"] = float((pred == y.astype(np.int64)).mean())
    return {m: out[m] for m in names}
