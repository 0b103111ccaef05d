"""Data for DiT (thesis Sec. 2.4): digits (offline default), image folders/ImageNet, latent shards.

Every datamodule yields ``(x, y)`` batches where ``x`` is either images in [-1, 1] ``[N, C, H, W]``
or precomputed latents of both horizontal flips ``[N, 2, C, h, w]`` (the module picks one per
sample). Batches come from ``common.training.InfiniteSampler``, whose order depends only on the
seed and the number of samples already consumed, so a resumed run sees the batches the
uninterrupted run would have seen.
"""

from __future__ import annotations

import bisect
import json
import logging
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, TensorDataset

from common.data.digits import digits_split, load_digits
from common.data.images import IMAGE_EXTENSIONS, list_images, open_image
from common.errors import FileReadError, one_line, reading
from common.training import resumable_loader

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- transforms
def center_crop_arr(pil_image: Image.Image, image_size: int) -> np.ndarray:
    """ADM's center crop: halve with a box filter while the short side is >= 2x the target, resize
    the short side to ``image_size`` with bicubic, then crop the center square (HWC uint8)."""
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(
        tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC
    )
    arr = np.array(pil_image)
    crop_y = (arr.shape[0] - image_size) // 2
    crop_x = (arr.shape[1] - image_size) // 2
    return arr[crop_y : crop_y + image_size, crop_x : crop_x + image_size]


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    """HWC uint8 -> CHW float in [-1, 1]."""
    return torch.from_numpy(arr).permute(2, 0, 1).float().div(127.5).sub(1.0)


# ----------------------------------------------------------------------------- datasets
class ImageFolderDataset(Dataset):
    """Images under ``root``: ImageNet/ImageFolder layout (one subfolder per class, sorted names
    give labels 0..K-1) or a flat folder (every image has label 0).

    Unreadable or malformed files are reported once (logged with their path) and replaced by the
    next readable image, so a long run never crashes or silently trains on garbage.
    """

    def __init__(self, root: str | Path, image_size: int) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"image folder {self.root} does not exist: set data.root to a folder of images "
                "(ImageNet layout: one subfolder per class)"
            )
        self.image_size = image_size
        class_dirs = sorted(p for p in self.root.iterdir() if p.is_dir())
        files: list[tuple[Path, int]] = []
        if class_dirs:
            self.classes = [p.name for p in class_dirs]
            for label, folder in enumerate(class_dirs):
                files += [(f, label) for f in list_images(folder)]
        else:
            self.classes = ["all"]
            files = [(f, 0) for f in list_images(self.root, recursive=False)]
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {self.root}")
        self.files = files
        self.skipped: set[str] = set()
        if not any(self._readable(i) for i in range(len(files))):  # stops at the first good one
            raise ValueError(
                f"no readable image under {self.root} ({len(files)} files failed to decode); "
                "set data.root to a folder of images"
            )

    def _readable(self, index: int) -> bool:
        try:
            open_image(self.files[index][0]).close()
            return True
        except OSError:
            return False

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> torch.Tensor:
        with open_image(self.files[index][0]) as img:
            return to_tensor(center_crop_arr(img.convert("RGB"), self.image_size))

    def __getitem__(self, index: int):
        for attempt in range(len(self.files)):
            i = (index + attempt) % len(self.files)
            try:
                return self.load(i), self.files[i][1]
            except OSError as err:  # common.errors.FileReadError names the file and the reason
                path = str(self.files[i][0])
                if path not in self.skipped:
                    self.skipped.add(path)
                    log.warning("skipping unreadable image: %s", one_line(err))
                    warnings.warn(f"skipping unreadable image: {one_line(err)}", stacklevel=2)
        raise FileReadError(
            f"no image under {self.root} can be read any more ({len(self.skipped)} failed); "
            "check the folder (a disk or network mount gone?) and resume"
        )


_REDO = "rerun extract_latents with the same out= to rewrite the shards it finds broken"


class LatentShardDataset(Dataset):
    """Precomputed VAE latents written by ``python -m diffusion_transformer.extract_latents``.

    Layout: ``manifest.json`` plus shards ``shard_00000.safetensors`` ... holding ``latents``
    ``[n, 2, C, h, w]`` (index 1 is the horizontally flipped image) and ``labels`` ``[n]``, and
    with ``crops=true`` the uint8 images ``crops`` ``[n, 3, R, R]`` (items are then
    (latents, label, crop)). Items are read lazily from the memory-mapped shards, so the dataset
    never has to fit in memory.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        manifest_path = self.root / "manifest.json"
        if not manifest_path.is_file():
            raise FileNotFoundError(
                f"no latent manifest at {manifest_path}: run `python -m "
                "diffusion_transformer.extract_latents data.root=<images> vae=<sd-vae folder> "
                "out=<this folder>` first"
            )
        with reading(manifest_path, hint="rerun extract_latents into a new folder"):
            self.manifest = json.loads(manifest_path.read_text())
            self.shards = [s["file"] for s in self.manifest["shards"]]
            sizes = [int(s["num"]) for s in self.manifest["shards"]]
        self.offsets = np.cumsum([0] + sizes).tolist()
        self.has_crops = bool(self.manifest.get("crops"))  # extract_latents crops=true
        self._handles: dict[int, object] = {}
        for k in range(len(self.shards)):  # every shard opens before training starts
            self._shard(k)
        self._handles = {}

    def __len__(self) -> int:
        return self.offsets[-1]

    def _shard(self, k: int):
        handle = self._handles.get(k)
        if handle is None:
            from safetensors import safe_open

            with reading(self.root / self.shards[k], hint=_REDO):
                handle = safe_open(str(self.root / self.shards[k]), framework="pt")
            self._handles[k] = handle
        return handle

    def __getitem__(self, index: int):
        k = bisect.bisect_right(self.offsets, index) - 1
        i = index - self.offsets[k]
        shard = self._shard(k)
        with reading(self.root / self.shards[k], hint=_REDO):
            latents = shard.get_slice("latents")[i : i + 1][0].float()
            label = shard.get_slice("labels")[i : i + 1][0]
            if self.has_crops:  # the uint8 image, for REPA's encoder
                return latents, int(label), shard.get_slice("crops")[i : i + 1][0]
        return latents, int(label)

    def __getstate__(self):  # handles are per process (DataLoader workers)
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state


# ----------------------------------------------------------------------------- datamodules
class _InfiniteDataModule(L.LightningDataModule):
    """Shared dataloader logic: an endless, resumable, rank-sharded sampler."""

    def __init__(self, batch_size: int, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.dataset: Dataset | None = None

    def build_dataset(self) -> Dataset:
        raise TypeError(f"{type(self).__name__} must define build_dataset()")

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is None:
            self.dataset = self.build_dataset()

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return resumable_loader(
            self.dataset, self.batch_size, self.seed, self.trainer, self.num_workers
        )


class DigitsDataModule(_InfiniteDataModule):
    """scikit-learn digits in pixel space, the offline default. A held-out fraction is kept out of
    training (``heldout()``), e.g. to train the digit classifier that judges samples."""

    def __init__(
        self,
        image_size: int = 8,
        batch_size: int = 128,
        holdout_fraction: float = 0.2,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers, seed)
        self.image_size = image_size
        self.holdout_fraction = holdout_fraction

    def _split(self):
        images, labels = load_digits(self.image_size)
        train, held = digits_split(len(images), self.holdout_fraction, self.seed)
        return images, labels, train, held

    def build_dataset(self) -> Dataset:
        images, labels, train, _ = self._split()
        return TensorDataset(images[train], labels[train])

    def heldout(self) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels, _, held = self._split()
        return images[held], labels[held]


class ImageFolderDataModule(_InfiniteDataModule):
    """ImageNet (train folder) or any image folder, ADM center crop at ``image_size``."""

    def __init__(
        self,
        root: str,
        image_size: int = 256,
        batch_size: int = 256,
        num_workers: int = 8,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers, seed)
        self.root = root
        self.image_size = image_size
        self.dataset = self.build_dataset()  # a missing or empty folder stops before training

    def build_dataset(self) -> Dataset:
        return ImageFolderDataset(self.root, self.image_size)


class LatentDataModule(_InfiniteDataModule):
    """Precomputed latent shards (fast-DiT style: encode once, train many times)."""

    def __init__(
        self, root: str, batch_size: int = 256, num_workers: int = 4, seed: int = 0
    ) -> None:
        super().__init__(batch_size, num_workers, seed)
        self.root = root
        self.dataset = self.build_dataset()  # a missing manifest stops before training

    def build_dataset(self) -> Dataset:
        return LatentShardDataset(self.root)
