"""Image sources for evaluation: arrays, tensors, ADM-style ``.npz`` files and image folders.

Every source is read as uint8 ``[N, H, W, C]`` batches (C = 1 or 3), the layout ADM's evaluator
reads from ``arr_0``. Float tensors are taken as ``[N, C, H, W]`` in [-1, 1] (a model's output).
``.npz`` members are streamed batch by batch, so 50k samples at 512^2 are never held at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from common.data.images import IMAGE_EXTENSIONS, list_images

ImageSource = np.ndarray | torch.Tensor | str | os.PathLike


def default_cache_dir() -> Path:
    """``$GENMODELS_CACHE`` or ``~/.cache/genmodels``."""
    return Path(os.environ.get("GENMODELS_CACHE", "~/.cache/genmodels")).expanduser()


def to_uint8_nhwc(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """uint8 ``[N, H, W, C]`` passes through; float ``[N, C, H, W]`` in [-1, 1] is quantised."""
    if isinstance(images, torch.Tensor):
        if images.dtype == torch.uint8:
            images = images.cpu().numpy()
        else:
            if images.ndim != 4:
                raise ValueError(f"expected [N, C, H, W] images, got {tuple(images.shape)}")
            x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
            images = x.permute(0, 2, 3, 1).cpu().numpy()
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(
            f"numpy images must be uint8 [N, H, W, C], got {images.dtype}; pass float images "
            "as a torch tensor [N, C, H, W] in [-1, 1]"
        )
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"expected uint8 [N, H, W, 1 or 3] images, got {images.shape}")
    return images


def _read_image(path: Path) -> np.ndarray | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("L") if im.mode in ("L", "I;16", "1") else im.convert("RGB")
            arr = np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError):
        return None
    return arr[..., None] if arr.ndim == 2 else arr


def _iter_folder(folder: Path, batch_size: int) -> Iterator[np.ndarray]:
    files = list_images(folder)
    if not files:
        raise FileNotFoundError(f"no {'/'.join(IMAGE_EXTENSIONS)} images under {folder}")
    skipped: list[str] = []
    batch: list[np.ndarray] = []
    shape: tuple[int, ...] | None = None
    for path in files:
        arr = _read_image(path)
        if arr is None:
            skipped.append(str(path))
            continue
        if arr.shape[-1] == 1:
            arr = np.repeat(arr, 3, axis=-1)
        if shape is None:
            shape = arr.shape
        elif arr.shape != shape:
            raise ValueError(
                f"{path} is {arr.shape[1]}x{arr.shape[0]} but earlier images in {folder} are "
                f"{shape[1]}x{shape[0]}: resize the folder to one size first"
            )
        batch.append(arr)
        if len(batch) == batch_size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} unreadable image file(s): {', '.join(skipped)}", stacklevel=2
        )


def _npz_member(path: Path, key: str) -> tuple[zipfile.ZipFile, str]:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise ValueError(f"{path} is not a readable .npz archive ({err}); pass an .npz") from None
    name = f"{key}.npy"
    if name not in zf.namelist():
        found = sorted(n.removesuffix(".npy") for n in zf.namelist())
        zf.close()
        raise KeyError(f"{path} has no '{key}' array (found {found})")
    return zf, name


def _iter_npz(path: Path, batch_size: int, key: str = "arr_0") -> Iterator[np.ndarray]:
    """Stream ``key`` from an ``.npz`` (compressed or not) without loading it whole."""
    zf, name = _npz_member(path, key)
    readers = {
        (1, 0): np.lib.format.read_array_header_1_0,
        (2, 0): np.lib.format.read_array_header_2_0,
    }
    with zf, zf.open(name) as f:
        read_header = readers.get(np.lib.format.read_magic(f))
        shape, fortran, dtype = read_header(f) if read_header else ((), True, np.dtype("O"))
        if not (fortran or dtype.hasobject or not shape):
            per_item = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
            for start in range(0, shape[0], batch_size):
                n = min(batch_size, shape[0] - start)
                yield np.frombuffer(f.read(n * per_item), dtype=dtype).reshape((n, *shape[1:]))
            return
    with np.load(path) as data:
        arr = data[key]
    for start in range(0, len(arr), batch_size):
        yield arr[start : start + batch_size]


def npz_keys(path: str | os.PathLike) -> list[str]:
    """Array names stored in an ``.npz`` file."""
    with zipfile.ZipFile(path) as zf:
        return [n.removesuffix(".npy") for n in zf.namelist()]


def iter_image_batches(source: ImageSource, batch_size: int = 64) -> Iterator[np.ndarray]:
    """Yield uint8 ``[B, H, W, C]`` batches from an array/tensor, ``.npz`` (``arr_0``) or folder.

    Unreadable files in a folder are skipped with a warning naming them.
    """
    if isinstance(source, np.ndarray | torch.Tensor):
        for start in range(0, len(source), batch_size):
            yield to_uint8_nhwc(source[start : start + batch_size])
        return
    path = Path(source).expanduser()
    if path.is_dir():
        yield from _iter_folder(path, batch_size)
    elif path.suffix == ".npz" and path.is_file():
        for batch in _iter_npz(path, batch_size):
            yield to_uint8_nhwc(batch)
    elif not path.exists():
        raise FileNotFoundError(f"image source {path} does not exist")
    else:
        raise ValueError(f"{path} is neither an image folder nor an .npz file with arr_0")


def load_images(source: ImageSource) -> np.ndarray:
    """All images of ``source`` as one uint8 ``[N, H, W, C]`` array."""
    return np.concatenate(list(iter_image_batches(source, 1024)))


def load_npz_labels(path: str | os.PathLike) -> np.ndarray | None:
    """Class labels stored next to ``arr_0`` (``labels``, or ADM's ``arr_1``), if any."""
    keys = npz_keys(path)
    for key in ("labels", "arr_1"):
        if key in keys:
            with np.load(path) as data:
                return np.asarray(data[key]).astype(np.int64)
    return None


def source_fingerprint(source: str | os.PathLike) -> str:
    """Key for caches: resolved path plus size and mtime (of each image file, for folders)."""
    path = Path(source).expanduser().resolve()
    if path.is_dir():
        entries = [
            (str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns)
            for p in list_images(path)
        ]
    else:
        st = path.stat()
        entries = [(path.name, st.st_size, st.st_mtime_ns)]
    blob = json.dumps({"path": str(path), "entries": entries}).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
