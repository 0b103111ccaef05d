"""Read MNIST and CIFAR-10 from torchvision's on-disk layouts, without downloading anything.

MNIST is stored as IDX files (optionally gzipped) and parsed here directly. CIFAR-10's
"python version" batches are pickles; they are read with a restricted unpickler that only
resolves numpy's array reconstruction globals, so a tampered file cannot run code.

Both readers return ``(x_train, y_train, x_test, y_test)`` as numpy arrays: images ``uint8``
(MNIST ``[N, 28, 28]``, CIFAR-10 ``[N, 32, 32, 3]``, channels last) and labels ``int64`` ``[N]``.
"""

from __future__ import annotations

import gzip
import os
import pickle
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCH = "test_batch"

_IDX_IMAGES_MAGIC = 2051
_IDX_LABELS_MAGIC = 2049
_MNIST_SIDE = 28
_CIFAR_SIDE = 32
_NUM_CLASSES = 10

_MNIST_HOWTO = (
    "run `torchvision.datasets.MNIST(root, download=True)` (train and test) on a machine with "
    "internet access and copy the resulting `MNIST` folder into the root folder here"
)
_CIFAR10_HOWTO = (
    "run `torchvision.datasets.CIFAR10(root, download=True)` on a machine with internet access "
    f"and copy the resulting `{CIFAR10_FOLDER}` folder into the root folder here"
)

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _corrupted(path: Path, problem: str, howto: str) -> ValueError:
    return ValueError(f"{path} is corrupted ({problem}); re-download it: {howto}")


def _first_complete(candidates: list[Path], names: list[list[str]]) -> Path | None:
    """The first candidate folder holding, for every entry of ``names``, one of its spellings."""
    for folder in candidates:
        if all(any((folder / n).is_file() for n in alts) for alts in names):
            return folder
    return None


# ---------------------------------------------------------------------------------------------
# MNIST (IDX format)
# ---------------------------------------------------------------------------------------------


def _mnist_folder(root: Path) -> Path:
    candidates = [root / "MNIST" / "raw", root / "raw", root]
    names = [[n, n + ".gz"] for n in MNIST_FILES.values()]
    folder = _first_complete(candidates, names)
    if folder is not None:
        return folder
    partial = next(
        (c for c in candidates if any((c / n).is_file() for alts in names for n in alts)),
        candidates[0],
    )
    missing = [
        str(partial / alts[0]) for alts in names if not any((partial / n).is_file() for n in alts)
    ]
    others = ", ".join(str(c) for c in candidates if c != partial)
    raise FileNotFoundError(
        f"MNIST not found under {root}: missing {', '.join(missing)} (each may also be gzipped, "
        f"with a .gz suffix; also looked in {others}). To obtain it, {_MNIST_HOWTO}."
    )


def _read_maybe_gzipped(folder: Path, name: str) -> tuple[Path, bytes]:
    """The bytes of ``folder/name``, or of ``folder/name.gz`` decompressed; plain wins if both."""
    plain, packed = folder / name, folder / (name + ".gz")
    if plain.is_file():
        return plain, plain.read_bytes()
    try:
        with gzip.open(packed, "rb") as f:
            return packed, f.read()
    except (OSError, EOFError, zlib.error) as err:
        raise _corrupted(packed, f"cannot decompress it: {err}", _MNIST_HOWTO) from err


def _parse_idx(path: Path, data: bytes, magic: int, ndim: int) -> np.ndarray:
    """Parse one uint8 IDX file: big-endian magic, ``ndim`` uint32 dims, then the raw bytes."""
    header = 4 + 4 * ndim
    if len(data) < header:
        raise _corrupted(path, f"{len(data)} bytes, shorter than its header", _MNIST_HOWTO)
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise _corrupted(path, f"magic number {found}, expected {magic}", _MNIST_HOWTO)
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        kind = "truncated" if len(data) < expected else "has trailing bytes"
        raise _corrupted(
            path,
            f"{kind}: {len(data)} bytes, expected {expected} for dims {list(dims)}",
            _MNIST_HOWTO,
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def _read_mnist_split(folder: Path, images_name: str, labels_name: str) -> tuple[np.ndarray, ...]:
    images_path, raw = _read_maybe_gzipped(folder, images_name)
    images = _parse_idx(images_path, raw, _IDX_IMAGES_MAGIC, 3)
    if images.shape[1:] != (_MNIST_SIDE, _MNIST_SIDE):
        raise _corrupted(
            images_path,
            f"images of {images.shape[1]}x{images.shape[2]}, expected {_MNIST_SIDE}x{_MNIST_SIDE}",
            _MNIST_HOWTO,
        )
    labels_path, raw = _read_maybe_gzipped(folder, labels_name)
    labels = _parse_idx(labels_path, raw, _IDX_LABELS_MAGIC, 1).astype(np.int64)
    if labels.size and labels.max() >= _NUM_CLASSES:
        raise _corrupted(labels_path, f"label {labels.max()} out of range 0..9", _MNIST_HOWTO)
    if len(images) != len(labels):
        raise ValueError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} "
            f"labels; the files do not belong together or one is corrupted; re-download them: "
            f"{_MNIST_HOWTO}"
        )
    return images, labels


def read_mnist(root: str | os.PathLike) -> Arrays:
    """Read MNIST from torchvision's layout ``<root>/MNIST/raw/{train,t10k}-*-idx?-ubyte[.gz]``.

    ``root`` may also be the ``MNIST`` folder itself or the folder holding the four files.
    Returns ``(x_train, y_train, x_test, y_test)``: images ``uint8 [N, 28, 28]``, labels
    ``int64 [N]``. Raises ``FileNotFoundError`` when a file is missing and ``ValueError`` when
    one is malformed.
    """
    folder = _mnist_folder(Path(root))
    x_train, y_train = _read_mnist_split(
        folder, MNIST_FILES["train_images"], MNIST_FILES["train_labels"]
    )
    x_test, y_test = _read_mnist_split(
        folder, MNIST_FILES["test_images"], MNIST_FILES["test_labels"]
    )
    return x_train, y_train, x_test, y_test


# ---------------------------------------------------------------------------------------------
# CIFAR-10 (restricted pickles)
# ---------------------------------------------------------------------------------------------


def _numpy_reconstruct() -> Callable[..., Any]:
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


_ALLOWED_GLOBALS: dict[tuple[str, str], Callable[[], Any]] = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
}


class _ForbiddenGlobal(ValueError):
    """A pickle asked for a global outside the allow-list."""


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals needed to rebuild plain numpy arrays."""

    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        resolve = _ALLOWED_GLOBALS.get((module, name))
        if resolve is None:
            raise _ForbiddenGlobal(
                f"{self._path} references the global {module}.{name}, which a CIFAR-10 batch "
                f"never does (only numpy array reconstruction is allowed); refusing to load it. "
                f"The file is not an original CIFAR-10 python batch; re-download it: "
                f"{_CIFAR10_HOWTO}"
            )
        return resolve()


def _field(batch: dict, key: str) -> Any:
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    return None


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch as ``(images uint8 [k, 32, 32, 3], labels int64 [k])``."""
    with path.open("rb") as f:
        try:
            batch = _ArrayOnlyUnpickler(f, path).load()
        except _ForbiddenGlobal:
            raise
        except Exception as err:  # any failure to parse untrusted bytes means a damaged file
            raise _corrupted(path, f"cannot unpickle it: {err}", _CIFAR10_HOWTO) from err
    if not isinstance(batch, dict):
        raise _corrupted(path, f"holds a {type(batch).__name__}, not a dict", _CIFAR10_HOWTO)
    data, labels = _field(batch, "data"), _field(batch, "labels")
    size = 3 * _CIFAR_SIDE * _CIFAR_SIDE
    if not (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[1] == size
    ):
        found = (
            f"{data.dtype} array of shape {data.shape}"
            if isinstance(data, np.ndarray)
            else type(data).__name__
        )
        raise _corrupted(path, f"'data' is {found}, expected uint8 [k, {size}]", _CIFAR10_HOWTO)
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as err:
        raise _corrupted(path, f"'labels' is not a list of ints: {err}", _CIFAR10_HOWTO) from err
    if labels.shape != (len(data),):
        raise _corrupted(
            path,
            f"'labels' has shape {labels.shape}, expected ({len(data)},) to match 'data'",
            _CIFAR10_HOWTO,
        )
    if labels.size and (labels.min() < 0 or labels.max() >= _NUM_CLASSES):
        raise _corrupted(path, "'labels' out of range 0..9", _CIFAR10_HOWTO)
    images = data.reshape(len(data), 3, _CIFAR_SIDE, _CIFAR_SIDE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def read_cifar10(root: str | os.PathLike) -> Arrays:
    """Read CIFAR-10 from torchvision's layout ``<root>/cifar-10-batches-py/``.

    ``root`` may also be the ``cifar-10-batches-py`` folder itself. The batches
    ``data_batch_1..5`` form the training set (in that order) and ``test_batch`` the test set.
    Returns ``(x_train, y_train, x_test, y_test)``: images ``uint8 [N, 32, 32, 3]`` (channels
    last), labels ``int64 [N]``. Raises ``FileNotFoundError`` when a file is missing and
    ``ValueError`` when one is malformed or references anything but numpy array globals.
    """
    root = Path(root)
    candidates = [root / CIFAR10_FOLDER, root]
    names = [*CIFAR10_TRAIN_BATCHES, CIFAR10_TEST_BATCH]
    folder = _first_complete(candidates, [[n] for n in names])
    if folder is None:
        partial = next(
            (c for c in candidates if any((c / n).is_file() for n in names)), candidates[0]
        )
        missing = [str(partial / n) for n in names if not (partial / n).is_file()]
        raise FileNotFoundError(
            f"CIFAR-10 not found under {root}: missing {', '.join(missing)}. "
            f"To obtain it, {_CIFAR10_HOWTO}."
        )
    train = [_read_cifar_batch(folder / n) for n in CIFAR10_TRAIN_BATCHES]
    x_test, y_test = _read_cifar_batch(folder / CIFAR10_TEST_BATCH)
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return x_train, y_train, x_test, y_test
