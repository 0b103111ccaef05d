"""Training images for the StyleGAN2 generators G that GANgealing aligns with (thesis Ch. 4).

``data=`` is a folder of images (``datasets.ImageFolder``: recursive, sorted, center-cropped to
the training resolution, in ``[-1, 1]``; the thesis' GANs are trained on 256x256 center crops,
Sec. 4.4.2) or the name of a bundled photograph (``astronaut``, ``chelsea``, ``china``, ...): the
offline default, random similarity warps of that photo (``synthetic.SimilarityWarpDataset``, the
same images as the offline PCK benchmark), so the training CLI runs with no files.
:class:`ImageDataModule` serves endless, resumable batches (``common.training.InfiniteSampler``)
with optional seeded horizontal flips (StyleGAN2's x-flip augmentation).
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from common.training import resumable_loader, step_seed
from gangealing.data.datasets import ImageFolder
from gangealing.data.synthetic import SKIMAGE_IMAGES, SKLEARN_IMAGES, SimilarityWarpDataset

BUNDLED_IMAGES = tuple(SKIMAGE_IMAGES) + tuple(SKLEARN_IMAGES)


class _Images(Dataset):
    """The image tensors of a dataset whose items are dicts with an ``image`` entry."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]


def build_dataset(
    data: str | os.PathLike, resolution: int, synthetic_size: int | None, seed: int
) -> Dataset:
    """``data``: a folder of images, or (with ``synthetic_size``, the number of warps; None for a
    folder) a bundled photograph's name (random similarity warps)."""
    path = Path(data).expanduser()
    if synthetic_size is not None and str(data) in BUNDLED_IMAGES and not path.is_dir():
        warps = SimilarityWarpDataset(
            image=str(data), size=resolution, num_images=synthetic_size, seed=seed
        )
        return _Images(warps.images)
    if not path.is_dir():
        raise FileNotFoundError(
            f"image folder {path} does not exist; pass data=folder data.root=<folder of PNG/JPEG "
            f"images>, or data=photo data.image=<{'|'.join(BUNDLED_IMAGES)}> for the offline set"
        )
    return ImageFolder(path, resolution)


class ImageDataModule(L.LightningDataModule):
    """Endless shuffled batches ``[B, 3, R, R]`` in ``[-1, 1]`` for GAN training.

    The order is a pure function of ``(seed, step)`` (``InfiniteSampler``), and so are the
    horizontal flips (``flip``: each image flipped with probability 1/2, StyleGAN2's x-flip
    augmentation, drawn on the device from ``step_seed``), so a resumed run reads the batches the
    uninterrupted one would have read; each rank reads its own slice.
    """

    def __init__(
        self,
        data: str | os.PathLike,
        resolution: int,
        batch_size: int,
        flip: bool,
        num_workers: int,
        synthetic_size: int | None,
        seed: int,
    ) -> None:
        super().__init__()
        self.data, self.resolution = data, int(resolution)
        self.batch_size, self.flip, self.num_workers = batch_size, flip, num_workers
        self.synthetic_size, self.seed = synthetic_size, seed
        self.dataset: Dataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is None:
            self.dataset = build_dataset(self.data, self.resolution, self.synthetic_size, self.seed)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return resumable_loader(
            self.dataset, self.batch_size, self.seed, self.trainer, self.num_workers
        )

    def on_after_batch_transfer(self, batch: torch.Tensor, dataloader_idx: int) -> torch.Tensor:
        if not self.flip or self.trainer is None or not self.trainer.training:
            return batch
        step, rank = self.trainer.global_step, self.trainer.global_rank
        return random_flip(batch, step_seed(self.seed + 1, step, rank))


def random_flip(batch: torch.Tensor, seed: int) -> torch.Tensor:
    """Flip each image of ``[N, C, H, W]`` left-right with probability 1/2 (seeded)."""
    g = torch.Generator(device=batch.device).manual_seed(seed)
    flipped = torch.rand(batch.shape[0], generator=g, device=batch.device) < 0.5
    return torch.where(flipped.view(-1, 1, 1, 1), batch.flip(-1), batch)
