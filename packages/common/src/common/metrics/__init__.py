"""Sample-quality metrics of thesis Sec. 2.5 (FID-50K, sFID, IS, precision, recall), offline too.

Public API
----------
``evaluate_images(samples, reference, metrics, *, labels=None, inception_weights=None,
batch_size=64, device=None, cache_dir=None, k=3, is_splits=10, fd_method="sqrtm")
-> dict[str, float]``
    Scores ``samples`` against ``reference``, one pass over the samples per feature space.

    ``samples``: uint8 ``[N, H, W, 1|3]`` array or tensor, float tensor ``[N, C, H, W]`` in
    [-1, 1], an ``.npz`` (``arr_0``, ADM's format; ``labels`` or ``arr_1`` are read for
    ``acc_digits``) or an image folder (recursive png/jpg/jpeg/webp; unreadable files are skipped
    with a warning naming them).
    ``reference``: the same kinds, or an ``.npz`` of statistics (``mu``/``sigma``, optionally
    ADM's ``mu_s``/``sigma_s`` for sFID; ADM's reference batches and pytorch-fid's files load as
    they are). Stored statistics take precedence over stored images, as in ADM's evaluator.
    Statistics computed from a folder or ``.npz`` are cached in ``<cache_dir>/reference_stats``.
    ``None`` is allowed when only ``is``/``is_digits``/``acc_digits`` are asked for.
    ``cache_dir``: ``$GENMODELS_CACHE`` or ``~/.cache/genmodels`` by default.
    ``fd_method="eigh"``: same Fréchet distance, much faster on CPUs (see ``frechet_distance``).

``available_metrics() -> list[str]``
    Inception (need ``inception_weights``, the FID Inception file
    ``weights-inception-2015-12-05-6726825d.pth``; config key ``metrics.inception_weights``):
    ``fid`` (Heusel et al. 2017), ``sfid`` (Nash et al. 2021; ``mixed_6/conv``, 2023-d),
    ``is`` (Salimans et al. 2016), ``precision``/``recall`` (Kynkäänniemi et al. 2019, k=3).
    Offline digits feature space (a classifier the project trains on scikit-learn's digits):
    ``fd_digits``, ``is_digits``, ``precision_digits``, ``recall_digits``, ``acc_digits``.
    Unknown names raise ``ValueError`` listing these.

``reference_stats(source, feature_space="inception"|"digits", *, keep_features=False,
inception_weights=None, cache_dir=None, batch_size=64, device=None) -> dict[str, FeatureStats]``
    ``{"pool", "spatial"}`` (Inception) or ``{"features"}`` (digits) of reference images; path
    sources are cached keyed by (path, file sizes and mtimes, feature space).

``frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6, method="sqrtm") -> float``
``FeatureStats(mu, sigma, features=None)``: ``from_features``, ``save(path)``, ``load(path)``
(``.npz`` keys ``mu``, ``sigma``, ``features``).
``precision_recall(real_features, fake_features, k=3, chunk_size=10000, device=None)
-> (precision, recall)``
``inception_score(logits, splits=10) -> float``
``DigitsFeatureSpace.load(cache_dir=None, device="cpu")``: the digits classifier (trained and
cached on first use).
``load_images(source) -> np.ndarray``, ``iter_image_batches(source, batch_size)``.

Errors: a missing Inception weights file raises ``FileNotFoundError`` naming the file, the path
tried and ``metrics.inception_weights``; nothing is ever downloaded. Precision/recall against a
statistics-only reference raise ``ValueError`` (raw features are needed).
"""

from __future__ import annotations

from common.metrics.digits import DigitsFeatureSpace
from common.metrics.evaluate import available_metrics, evaluate_images, reference_stats
from common.metrics.frechet import FeatureStats, frechet_distance
from common.metrics.inception import (
    INCEPTION_WEIGHTS_CONFIG_KEY,
    INCEPTION_WEIGHTS_FILE,
    resolve_inception_weights,
)
from common.metrics.inputs import default_cache_dir, iter_image_batches, load_images
from common.metrics.precision_recall import inception_score, precision_recall

__all__ = [
    "INCEPTION_WEIGHTS_CONFIG_KEY",
    "INCEPTION_WEIGHTS_FILE",
    "DigitsFeatureSpace",
    "FeatureStats",
    "available_metrics",
    "default_cache_dir",
    "evaluate_images",
    "frechet_distance",
    "inception_score",
    "iter_image_batches",
    "load_images",
    "precision_recall",
    "reference_stats",
    "resolve_inception_weights",
]
