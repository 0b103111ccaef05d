"""An offline alignment benchmark with exact ground truth (for thesis Sec. 4.4.2, PCK-Transfer).

SPair-71k and CUB cannot be downloaded here, so this module builds a keypoint-transfer benchmark
from a real photograph that ships with scikit-image or scikit-learn: the image is cropped around
its object (the *canonical* image), then warped by random similarity transforms (rotation,
uniform scale, translation) with reflection padding. K corner-like keypoints detected on the
canonical image are carried through the same transforms, so the correspondence between any two
images is known exactly and PCK-Transfer can be computed for alignment methods.

Conventions: images ``[N, 3, S, S]`` in ``[-1, 1]``; keypoints pixel ``(x, y)`` with pixel
centres at integers. ``matrices[i]`` (3x3) maps canonical pixel coordinates to pixel coordinates
of image ``i``; ``thetas[i]`` (2x3) is the matching reverse sampling warp for
``F.affine_grid(..., align_corners=False)`` in normalised coordinates ``u = (2x + 1) / S - 1``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from common.checkpoint import write_json
from gangealing.align.stn import grid_sample
from gangealing.data.datasets import resample_window

SKIMAGE_IMAGES = (
    "astronaut", "chelsea", "cat", "coffee", "rocket", "camera", "coins",
    "immunohistochemistry", "retina", "hubble_deep_field",
)  # fmt: skip
SKLEARN_IMAGES = ("china", "flower")

OBJECT_CROPS: dict[str, tuple[float, float, float]] = {
    "astronaut": (0.44, 0.25, 0.5),
    "chelsea": (0.51, 0.52, 0.9),
    "cat": (0.51, 0.52, 0.9),
    "coffee": (0.5, 0.4, 0.75),
    "china": (0.33, 0.49, 0.9),
    "flower": (0.48, 0.52, 0.6),
}
"""Square crop on the object: centre ``(x / W, y / H)`` and side as a fraction of min(W, H)."""


def load_reference_image(name: str) -> np.ndarray:
    """A bundled photograph as ``uint8 [H, W, 3]``: ``skimage.data.<name>()`` or sklearn's
    ``load_sample_images`` (``"china"``, ``"flower"``)."""
    if name in SKLEARN_IMAGES:
        from sklearn.datasets import load_sample_images

        bunch = load_sample_images()
        index = [Path(f).stem for f in bunch.filenames].index(name)
        return np.asarray(bunch.images[index])
    if name not in SKIMAGE_IMAGES:
        raise ValueError(
            f"unknown reference image {name!r}; choose one of {SKIMAGE_IMAGES + SKLEARN_IMAGES} "
            "or pass an array [H, W, 3]"
        )
    import skimage.data

    array = np.asarray(getattr(skimage.data, name)())
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    return array[..., :3].astype(np.uint8)


def canonical_image(image: str | np.ndarray, size: int) -> torch.Tensor:
    """Crop ``image`` on its object (:data:`OBJECT_CROPS`, else the central square) and resize
    it to ``[3, size, size]`` in ``[-1, 1]``."""
    array = load_reference_image(image) if isinstance(image, str) else np.asarray(image)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"canonical image must be [H, W, 3], got shape {array.shape}")
    if array.dtype != np.uint8:
        array = (np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8)
    height, width = array.shape[:2]
    crop = OBJECT_CROPS.get(image) if isinstance(image, str) else None
    cx, cy, frac = crop if crop is not None else (0.5, 0.5, 1.0)
    side = frac * min(width, height)
    x0 = min(max(cx * width - side / 2, 0.0), width - side)
    y0 = min(max(cy * height - side / 2, 0.0), height - side)
    return resample_window(Image.fromarray(array), (x0, y0, side, side), size)


def detect_keypoints(
    canonical: torch.Tensor, num_keypoints: int, margin: float = 0.2
) -> torch.Tensor:
    """``[K, 2]`` well-spread Harris corners of the canonical image, ``(x, y)`` pixels.

    Corners are searched at least ``margin * size`` away from the border and at least
    ``size / 8`` apart, strongest first; a regular grid fills up when too few are found.
    """
    from skimage.feature import corner_harris, corner_peaks

    size = canonical.shape[-1]
    gray = ((canonical.mean(0) + 1) / 2).numpy().astype(np.float64)
    border = max(1, int(round(margin * size)))
    response = corner_harris(gray, sigma=max(1.0, size / 64))
    peaks = corner_peaks(
        response, min_distance=max(1, size // 8), threshold_rel=0.01, exclude_border=border
    )
    points = [(float(c), float(r)) for r, c in peaks[:num_keypoints]]
    side = math.ceil(math.sqrt(num_keypoints))
    grid = np.linspace(border, size - 1 - border, side)
    for y in grid:
        for x in grid:
            if len(points) >= num_keypoints:
                break
            if all((x - px) ** 2 + (y - py) ** 2 > (size / 16) ** 2 for px, py in points):
                points.append((float(x), float(y)))
    return torch.tensor(points[:num_keypoints], dtype=torch.float32)


# ---------------------------------------------------------------------------- geometry


def normalization_matrix(height: int, width: int) -> torch.Tensor:
    """3x3 ``N`` with ``N (x, y, 1) = (u, v, 1)``, ``u = (2x + 1) / W - 1`` (align_corners off)."""
    return torch.tensor(
        [[2.0 / width, 0.0, 1.0 / width - 1.0], [0.0, 2.0 / height, 1.0 / height - 1.0], [0, 0, 1]],
        dtype=torch.float64,
    )


def similarity_matrices(
    angles: torch.Tensor, scales: torch.Tensor, shifts: torch.Tensor, size: int
) -> torch.Tensor:
    """Forward pixel matrices ``[N, 3, 3]``: rotate by ``angles`` (radians) and scale about the
    image centre, then shift by ``shifts [N, 2]`` pixels."""
    centre = (size - 1) / 2
    cos, sin = torch.cos(angles.double()) * scales, torch.sin(angles.double()) * scales
    matrix = torch.zeros(angles.shape[0], 3, 3, dtype=torch.float64)
    matrix[:, 0, 0], matrix[:, 0, 1], matrix[:, 1, 0], matrix[:, 1, 1] = cos, -sin, sin, cos
    matrix[:, 0, 2] = centre + shifts[:, 0] - centre * (cos - sin)
    matrix[:, 1, 2] = centre + shifts[:, 1] - centre * (sin + cos)
    matrix[:, 2, 2] = 1.0
    return matrix


def reverse_thetas(matrices: torch.Tensor, size: int) -> torch.Tensor:
    """``[N, 2, 3]`` reverse sampling warps (normalised, align_corners=False) of forward pixel
    matrices: ``theta = N M^-1 N^-1``."""
    norm = normalization_matrix(size, size)
    return (norm @ torch.linalg.inv(matrices.double()) @ torch.linalg.inv(norm))[:, :2].float()


def apply_matrix(points: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """Apply 3x3 affine ``matrices [..., 3, 3]`` to pixel points ``[..., K, 2]``."""
    m = matrices.double()
    p = points.double()
    out = p @ m[..., :2, :2].transpose(-1, -2) + m[..., None, :2, 2]
    return out.to(points.dtype)


def warp_images(images: torch.Tensor, thetas: torch.Tensor) -> torch.Tensor:
    """Reverse-warp ``images`` with ``thetas`` (bilinear, reflection padding)."""
    grid = F.affine_grid(thetas.to(images.dtype), list(images.shape), align_corners=False)
    return grid_sample(images, grid, "reflection")


def keypoints_visible(points: torch.Tensor, size: int) -> torch.Tensor:
    """``True`` where a keypoint lies inside the image (between the first and last pixel centre)."""
    return ((points >= 0) & (points <= size - 1)).all(dim=-1)


def all_pairs(num_images: int) -> list[tuple[int, int]]:
    """Every ordered pair ``(a, b)`` with ``a != b``."""
    return [(a, b) for a in range(num_images) for b in range(num_images) if a != b]


# ---------------------------------------------------------------------------- dataset


class SimilarityWarpDataset(Dataset):
    """Random similarity warps of one real image with exactly transferred keypoints.

    Attributes (all tensors): ``images [N, 3, S, S]``, ``keypoints [N, K, 2]``, ``visible [N, K]``,
    ``matrices [N, 3, 3]`` (canonical -> image, pixels), ``thetas [N, 2, 3]`` (reverse warps that
    made each image from the canonical one), ``alignment_thetas [N, 2, 3]`` (the ground-truth
    alignment: reverse warps from the canonical frame into each image, what a perfect Spatial
    Transformer or congealing returns), ``canonical [3, S, S]`` and ``canonical_keypoints
    [K, 2]``. Deterministic given ``seed``.
    ``max_shift`` is a fraction of ``size``; ``image`` may also be an ``[H, W, 3]`` array;
    ``keypoints [K, 2]`` replaces the detected corners; ``noise_std`` adds Gaussian pixel noise.
    """

    def __init__(
        self,
        image: str | np.ndarray = "astronaut",
        size: int = 64,
        num_images: int = 64,
        max_rotation_deg: float = 20.0,
        scale_range: tuple[float, float] = (0.9, 1.1),
        max_shift: float = 0.1,
        num_keypoints: int = 12,
        seed: int = 0,
        keypoints: torch.Tensor | None = None,
        noise_std: float = 0.0,
    ) -> None:
        if scale_range[0] <= 0 or scale_range[1] < scale_range[0]:
            raise ValueError(f"scale_range must be (low, high) with 0 < low <= high: {scale_range}")
        self.size = int(size)
        self.canonical = canonical_image(image, self.size)
        if keypoints is None:
            keypoints = detect_keypoints(self.canonical, num_keypoints)
        self.canonical_keypoints = torch.as_tensor(keypoints, dtype=torch.float32)
        generator = torch.Generator().manual_seed(seed)
        uniform = lambda *shape: torch.rand(*shape, generator=generator, dtype=torch.float64)
        angles = (2 * uniform(num_images) - 1) * math.radians(max_rotation_deg)
        scales = scale_range[0] + (scale_range[1] - scale_range[0]) * uniform(num_images)
        shifts = (2 * uniform(num_images, 2) - 1) * max_shift * self.size
        self.matrices = similarity_matrices(angles, scales, shifts, self.size)
        self.thetas = reverse_thetas(self.matrices, self.size)
        self.alignment_thetas = reverse_thetas(torch.linalg.inv(self.matrices), self.size)
        canon = self.canonical.expand(num_images, -1, -1, -1)
        self.images = warp_images(canon, self.thetas)
        if noise_std > 0:
            noise = torch.randn(self.images.shape, generator=generator)
            self.images = self.images + noise_std * noise
        self.images = self.images.clamp(-1, 1)
        self.keypoints = apply_matrix(
            self.canonical_keypoints.expand(num_images, -1, -1), self.matrices
        )
        self.visible = keypoints_visible(self.keypoints, self.size)
        self.params = {"angles": angles, "scales": scales, "shifts": shifts}

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {
            "image": self.images[index],
            "keypoints": self.keypoints[index],
            "visible": self.visible[index],
            "matrix": self.matrices[index],
            "index": index,
        }

    def subset(self, indices: Sequence[int] | torch.Tensor) -> SimilarityWarpDataset:
        """A dataset holding only ``indices`` (same canonical image and keypoints)."""
        index = torch.as_tensor(indices, dtype=torch.long)
        out = SimilarityWarpDataset.__new__(SimilarityWarpDataset)
        out.size, out.canonical = self.size, self.canonical
        out.canonical_keypoints = self.canonical_keypoints
        for name in ("matrices", "thetas", "alignment_thetas", "images", "keypoints", "visible"):
            setattr(out, name, getattr(self, name)[index])
        out.params = {k: v[index] for k, v in self.params.items()}
        return out

    def ground_truth_transfer(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Exact transfer of image ``a``'s keypoints into image ``b``: ``M_b M_a^-1 p``."""
        relative = self.matrices[b] @ torch.linalg.inv(self.matrices[a])
        return apply_matrix(self.keypoints[a], relative)


def train_test_split(
    dataset: SimilarityWarpDataset, test_fraction: float = 0.25, seed: int = 0
) -> tuple[SimilarityWarpDataset, SimilarityWarpDataset]:
    """Random disjoint train/test subsets (at least one image each)."""
    n = len(dataset)
    if n < 2:
        raise ValueError("need at least 2 images to split")
    num_test = min(n - 1, max(1, round(test_fraction * n)))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return dataset.subset(order[num_test:].sort().values), dataset.subset(
        order[:num_test].sort().values
    )


def write_image_folder(dataset: SimilarityWarpDataset, folder: str | os.PathLike) -> Path:
    """Write the images as PNGs to ``folder/images/`` (readable by ``ImageFolder`` and the CLIs)
    and the ground truth to ``folder/keypoints.json``; returns the images folder."""
    folder = Path(folder)
    image_dir = folder / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    pixels = ((dataset.images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    names = []
    for i, image in enumerate(pixels):
        name = f"{i:06d}.png"
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(image_dir / name)
        names.append(f"images/{name}")
    record = {
        "size": dataset.size,
        "files": names,
        "keypoints": dataset.keypoints.tolist(),
        "visible": dataset.visible.tolist(),
        "matrices": dataset.matrices.tolist(),
        "canonical_keypoints": dataset.canonical_keypoints.tolist(),
    }
    write_json(record, folder / "keypoints.json", indent=None)
    return image_dir


def read_keypoints_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read ``keypoints.json`` from :func:`write_image_folder` back as tensors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; write it with write_image_folder()")
    record = json.loads(path.read_text())
    return {
        "size": int(record["size"]),
        "files": list(record["files"]),
        "keypoints": torch.tensor(record["keypoints"], dtype=torch.float32),
        "visible": torch.tensor(record["visible"], dtype=torch.bool),
        "matrices": torch.tensor(record["matrices"], dtype=torch.float64),
        "canonical_keypoints": torch.tensor(record["canonical_keypoints"], dtype=torch.float32),
    }
