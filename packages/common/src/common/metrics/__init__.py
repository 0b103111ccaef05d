"""Sample-quality metrics of thesis Sec. 2.5 (FID-50K, sFID, IS, precision, recall), offline too.

The API (inputs, caching, errors) is described in ``docs/common_metrics.md``.
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
