"""An offline feature space for the digits demo: a small CNN trained by the project on the data.

No pretrained network can be downloaded in the offline setting, and Inception features of 8x8
digits would mean little anyway, so the demo is scored in the feature space of a classifier
trained on scikit-learn's ``load_digits()`` (1,797 real 8x8 digits, 10 classes). The metrics carry
their own names and are never called FID:

- ``fd_digits``: Fréchet distance (Heusel et al. 2017) between Gaussians fitted to the 128-d
  penultimate features;
- ``is_digits``: the Inception Score formula (Salimans et al. 2016) on the classifier's softmax;
- ``precision_digits`` / ``recall_digits``: Kynkäänniemi et al. (2019) on the same features;
- ``acc_digits``: fraction of samples classified as the label they were generated for.

Training is deterministic (fixed seed, CPU, about 3 s on 2 cores): 80% of the digits
(``digits_split()``, seed 0), 30 epochs of Adam with one-pixel random shifts. Held-out accuracy on
the other 20% (360 digits): 0.989 (stored in the cache file as ``test_accuracy``). The weights are
cached as safetensors under ``<cache_dir>/metrics/`` (``$GENMODELS_CACHE`` or
``~/.cache/genmodels``), written atomically, and retrained when the file is absent or unreadable.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.checkpoint import atomic_save, safe_load
from common.data.digits import digits_split, load_digits
from common.metrics.inputs import default_cache_dir

CLASSIFIER_FILE = "digits_classifier_v1.safetensors"
FEATURE_DIM = 128
SPACE_KEY = "digits-v1"
SEED = 0


class DigitsClassifier(nn.Module):
    """Two 3x3 convolutions, a 2x2 max-pool, a 128-d penultimate layer and a 10-way head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.penultimate = nn.Linear(64 * 4 * 4, FEATURE_DIM)
        self.head = nn.Linear(FEATURE_DIM, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, 1, 8, 8]`` in [-1, 1] -> ``[N, 128]`` penultimate pre-activations.

        Taken before the ReLU: units the ReLU silences on all digits would make the covariance
        singular; the pre-activations keep all 128 dimensions informative.
        """
        return self.penultimate(self.conv(x).flatten(1))

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.features(x))


def _shift(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random translation by up to one pixel (pad with background -1, crop)."""
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)
    dy, dx = torch.randint(0, 3, (2, x.shape[0], 1, 1), generator=g)
    rows = dy + torch.arange(8).view(1, 8, 1)
    cols = dx + torch.arange(8).view(1, 1, 8)
    return padded[torch.arange(x.shape[0]).view(-1, 1, 1), 0, rows, cols].unsqueeze(1)


def train_digits_classifier(
    epochs: int = 20, batch_size: int = 64
) -> tuple[DigitsClassifier, float]:
    """Train on the 80% split, deterministically; returns the model and held-out accuracy.

    Runs on one CPU thread: the network is tiny (threads only add overhead), and a fixed thread
    count keeps float reductions in a fixed order, so every machine trains the same weights.
    """
    images, labels = load_digits()
    train, test = digits_split(len(images), 0.2, SEED)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            model = DigitsClassifier()
        g = torch.Generator().manual_seed(SEED)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        x, y = images[train], labels[train]
        model.train()
        for _ in range(epochs):
            for idx in torch.randperm(len(x), generator=g).split(batch_size):
                loss = F.cross_entropy(model(_shift(x[idx], g)), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        model.eval()
        with torch.no_grad():
            accuracy = (model(images[test]).argmax(1) == labels[test]).float().mean().item()
    finally:
        torch.set_num_threads(threads)
    return model, accuracy


def to_digits_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Images -> ``[N, 1, 8, 8]`` float in [-1, 1].

    uint8 input is ``[N, H, W, C]`` in [0, 255]; float input is ``[N, C, H, W]`` in [-1, 1].
    Three channels are averaged to gray; other sizes are resized (bilinear, antialiased).
    """
    x = torch.as_tensor(images) if isinstance(images, np.ndarray) else images
    if x.dtype == torch.uint8:
        if x.ndim == 3:
            x = x.unsqueeze(-1)
        x = x.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    x = x.float()
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(
            f"expected uint8 [N, H, W, 1|3] or float [N, 1|3, H, W] images, got {tuple(x.shape)}"
        )
    if x.shape[1] == 3:
        x = x.mean(dim=1, keepdim=True)
    if x.shape[-2:] != (8, 8):
        x = F.interpolate(x, size=(8, 8), mode="bilinear", align_corners=False, antialias=True)
    return x.clamp(-1, 1)


class DigitsFeatureSpace:
    """The trained classifier, loaded from the cache (or trained and cached when absent)."""

    def __init__(self, model: DigitsClassifier, test_accuracy: float, device: str = "cpu"):
        self.model = model.to(device).eval()
        self.test_accuracy = test_accuracy
        self.device = torch.device(device)

    @classmethod
    def load(
        cls, cache_dir: str | os.PathLike | None = None, device: torch.device | str = "cpu"
    ) -> DigitsFeatureSpace:
        """Load ``<cache_dir>/metrics/digits_classifier_v1.safetensors``; train it if absent."""
        path = Path(cache_dir or default_cache_dir()).expanduser() / "metrics" / CLASSIFIER_FILE
        if path.is_file():
            try:
                state = safe_load(path)
                accuracy = float(state.pop("test_accuracy"))
                model = DigitsClassifier()
                model.load_state_dict(state)
                return cls(model, accuracy, str(device))
            except (ValueError, KeyError, RuntimeError, OSError) as err:
                warnings.warn(
                    f"retraining the digits classifier: {path} is unreadable ({err})",
                    stacklevel=2,
                )
        model, accuracy = train_digits_classifier()
        state = dict(model.state_dict())
        state["test_accuracy"] = torch.tensor(accuracy)
        atomic_save(state, path)
        return cls(model, accuracy, str(device))

    @torch.no_grad()
    def __call__(self, images: np.ndarray | torch.Tensor) -> dict[str, np.ndarray]:
        """Images (see :func:`to_digits_input`) -> ``{"features", "logits"}`` float32 arrays."""
        x = to_digits_input(images).to(self.device)
        feats = self.model.features(x)
        logits = self.model.logits(feats)
        return {"features": feats.cpu().numpy(), "logits": logits.cpu().numpy()}
