"""Image helpers: tensors in [-1, 1] to uint8 arrays, sample grids and ADM-style ``.npz`` files."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common.checkpoint import atomic_write_bytes
from common.errors import reading

#: The image files every command reads (PIL decodes them all).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


def list_images(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """The image files in ``folder`` (and its subfolders unless ``recursive=False``), sorted."""
    folder = Path(folder)
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def open_image(path: str | os.PathLike) -> Image.Image:
    """Open and decode an image file; any failure (missing, truncated, not an image, a decoder
    error) is one ``FileReadError`` naming the file (PIL's own says only "Truncated File Read")."""
    with reading(path, what="the image "):
        image = Image.open(path)
        image.load()
    return image


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``[N, C, H, W]`` in [-1, 1] -> ``[N, H, W, 3]`` uint8 (grayscale is repeated to RGB)."""
    if images.ndim != 4:
        raise ValueError(f"expected [N, C, H, W] images, got shape {tuple(images.shape)}")
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    elif x.shape[1] != 3:
        raise ValueError(f"cannot turn {x.shape[1]}-channel images into RGB; decode latents first")
    return x.permute(0, 2, 3, 1).numpy()


def save_png(image: torch.Tensor, path: str | os.PathLike) -> Path:
    """One ``[3, H, W]`` image in [-1, 1] as a PNG (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(image[None])[0]).save(path)
    return path


def make_grid(images: np.ndarray, nrow: int | None = None, padding: int = 2) -> np.ndarray:
    """Tile ``[N, H, W, 3]`` uint8 images into one ``[rows*H, cols*W, 3]`` array."""
    n, h, w, c = images.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(n))))
    rows = int(math.ceil(n / nrow))
    grid = np.full(
        (rows * (h + padding) + padding, nrow * (w + padding) + padding, c), 255, np.uint8
    )
    for i in range(n):
        r, col = divmod(i, nrow)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        grid[y : y + h, x : x + w] = images[i]
    return grid


def save_grid(
    images: np.ndarray, path: str | os.PathLike, nrow: int | None = None, min_size: int = 64
) -> Path:
    """Save a PNG grid; images smaller than ``min_size`` are enlarged (nearest) to be visible."""
    scale = max(1, int(math.ceil(min_size / images.shape[1])))
    if scale > 1:
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    buffer = io.BytesIO()
    Image.fromarray(make_grid(images, nrow)).save(buffer, format="PNG")
    atomic_write_bytes(buffer.getvalue(), path)
    return Path(path)


def save_npz(images: np.ndarray, path: str | os.PathLike, **extra: np.ndarray) -> Path:
    """Save samples for ADM's evaluator: ``arr_0`` is ``[N, H, W, 3]`` uint8."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError("ADM .npz files hold uint8 images of shape [N, H, W, 3]")
    buffer = io.BytesIO()
    np.savez(buffer, arr_0=images, **extra)
    atomic_write_bytes(buffer.getvalue(), path)
    return Path(path)
