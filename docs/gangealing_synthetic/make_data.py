"""Build the offline PCK-Transfer benchmark of ``docs/gangealing_synthetic/README.md``.

Random similarity warps of a real photograph (scikit-image's ``chelsea`` cat) with exactly
transferred keypoints (``gangealing.data.synthetic``), plus per-image photometric jitter (contrast,
brightness, per-channel gain) and Gaussian noise, split into a GAN training folder and a
held-out test folder. Usage: ``python docs/gangealing_synthetic/make_data.py <out dir>
[--rotation 90] [--num-images 1024] [--num-test 64]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from gangealing.data.synthetic import SimilarityWarpDataset, train_test_split, write_image_folder


def photometric_jitter(
    images: torch.Tensor,
    seed: int,
    contrast: float = 0.3,
    brightness: float = 0.2,
    gain: float = 0.1,
) -> torch.Tensor:
    """Per image: ``c * x + b`` with ``c ~ U(1 - contrast, 1 + contrast)``, ``b ~ U(+-brightness)``,
    and a per-channel gain ``U(1 +- gain)``; clamped to ``[-1, 1]``."""
    g = torch.Generator().manual_seed(seed)
    n = images.shape[0]
    u = lambda *s: 2 * torch.rand(*s, generator=g) - 1  # noqa: E731
    c = 1 + contrast * u(n, 1, 1, 1)
    b = brightness * u(n, 1, 1, 1)
    k = 1 + gain * u(n, 3, 1, 1)
    return (k * (c * images + b)).clamp(-1, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--image", default="chelsea")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--num-images", type=int, default=1024)
    parser.add_argument("--num-test", type=int, default=64)
    parser.add_argument("--rotation", type=float, default=90.0)
    parser.add_argument("--noise", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    dataset = SimilarityWarpDataset(
        args.image,
        size=args.size,
        num_images=args.num_images,
        max_rotation_deg=args.rotation,
        scale_range=(0.8, 1.2),
        max_shift=0.1,
        num_keypoints=12,
        seed=args.seed,
        noise_std=args.noise,
    )
    dataset.images = photometric_jitter(dataset.images, args.seed + 1)
    train, test = train_test_split(dataset, args.num_test / args.num_images, seed=args.seed)
    print("train images:", write_image_folder(train, args.out / "train"))
    print("test images :", write_image_folder(test, args.out / "test"))


if __name__ == "__main__":
    main()
