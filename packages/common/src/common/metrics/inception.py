"""The FID Inception network (TF "inception-2015-12-05" ported to PyTorch by torch-fidelity).

This is the network behind ``torchmetrics.image.fid.FrechetInceptionDistance(feature=2048,
feature_extractor_weights_path=...)`` and ``InceptionScore``: torchmetrics' ``NoTrainInceptionV3``
subclasses torch-fidelity's ``FeatureExtractorInceptionV3``, which loads the weights file with
``torch.load`` (or downloads it when no path is given; we always give one). Inputs are uint8
``[N, 3, H, W]`` in [0, 255]; they are resized to 299x299 with TensorFlow-1 compatible bilinear
interpolation (what ADM's evaluator does inside the TF graph; torchmetrics' ``antialias=False``)
and scaled to [-1, 1].

One forward pass gives the three feature sets of thesis Sec. 2.5 / ADM's evaluator:

- ``pool``: 2048-d ``pool_3`` features (FID, precision/recall);
- ``logits``: 1008-d unbiased logits, ``pool_3 @ W`` (Inception Score, as torchmetrics/ADM);
- ``spatial``: first 7 channels of ``mixed_6/conv`` (torch-fidelity's ``Mixed_6d.branch1x1``
  after BN + ReLU), 7x17x17 = 2023-d, flattened channels-last like ADM (sFID, Nash et al. 2021).

Weights are read from a local file only; nothing is downloaded, and there is no fallback to random
weights.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import numpy as np
import torch

INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_WEIGHTS_FILE
)
INCEPTION_WEIGHTS_CONFIG_KEY = "metrics.inception_weights"
SPATIAL_CHANNELS = 7


def default_inception_weights() -> Path:
    """Where torch-fidelity puts the file it downloads: ``$TORCH_HOME/hub/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE


def resolve_inception_weights(path: str | os.PathLike | None) -> Path:
    """The weights file to use; ``FileNotFoundError`` saying what to set when it is missing.

    ``path`` may be the file or a folder holding it; ``None`` tries torch-fidelity's download
    location (reading a file already there is not a download).
    """
    tried = default_inception_weights() if path is None else Path(path).expanduser()
    if tried.is_dir():
        tried = tried / INCEPTION_WEIGHTS_FILE
    if tried.is_file():
        return tried
    raise FileNotFoundError(
        f"FID Inception weights '{INCEPTION_WEIGHTS_FILE}' not found at {tried}. fid, sfid, is, "
        "precision and recall need them and nothing is downloaded: fetch the file (torch-fidelity "
        f"release, {INCEPTION_WEIGHTS_URL}) and set {INCEPTION_WEIGHTS_CONFIG_KEY}="
        f"/path/to/{INCEPTION_WEIGHTS_FILE} (inception_weights=... in Python). Without network "
        "access use the offline digits metrics (fd_digits, is_digits, precision_digits, "
        "recall_digits, acc_digits) instead."
    )


@functools.lru_cache(maxsize=8)
def _weights_digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:16]


def inception_space_key(weights: Path) -> str:
    """Cache key of the feature space: the weights' content hash (memoised by size/mtime)."""
    st = weights.stat()
    return f"inception-{_weights_digest(str(weights.resolve()), st.st_size, st.st_mtime_ns)}"


class InceptionFeatures:
    """torch-fidelity's FID Inception with a hook for sFID's spatial features."""

    def __init__(self, weights: Path, device: torch.device | str = "cpu") -> None:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        try:
            # torch-fidelity unpickles with weights_only=False: check first that the file holds
            # only tensors and plain containers, so loading it cannot run code.
            torch.load(weights, map_location="cpu", weights_only=True)
            net = FeatureExtractorInceptionV3(
                "inception-v3-compat",
                ["2048", "logits_unbiased"],
                feature_extractor_weights_path=str(weights),
            )
        except (RuntimeError, ValueError, KeyError, OSError) as err:
            raise ValueError(
                f"{weights} is not the FID Inception state dict ({INCEPTION_WEIGHTS_FILE}, "
                f"as converted by torch-fidelity): {err}"
            ) from err
        self.net = net.to(device)
        self.device = torch.device(device)
        self._spatial: list[torch.Tensor] = []
        self.net.Mixed_6d.branch1x1.register_forward_hook(self._keep_spatial)

    def _keep_spatial(self, module, inputs, output: torch.Tensor) -> None:
        x = output[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1)  # ADM: NHWC [..., :7]
        self._spatial.append(x.reshape(x.shape[0], -1).float())

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 ``[N, H, W, 1 or 3]`` -> ``{"pool", "logits", "spatial"}`` float32 arrays."""
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        x = x.permute(0, 3, 1, 2)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        self._spatial.clear()
        pool, logits = self.net(x.contiguous())
        spatial = self._spatial.pop()
        return {
            "pool": pool.float().cpu().numpy(),
            "logits": logits.float().cpu().numpy(),
            "spatial": spatial.cpu().numpy(),
        }


@functools.lru_cache(maxsize=2)
def _cached_extractor(path: str, size: int, mtime_ns: int, device: str) -> InceptionFeatures:
    return InceptionFeatures(Path(path), device)


def load_inception(
    weights: str | os.PathLike | None, device: torch.device | str = "cpu"
) -> InceptionFeatures:
    """The extractor for ``weights`` (see :func:`resolve_inception_weights`), kept in memory for
    the next call (a training callback evaluates many times)."""
    path = resolve_inception_weights(weights)
    st = path.stat()
    return _cached_extractor(str(path.resolve()), st.st_size, st.st_mtime_ns, str(device))
