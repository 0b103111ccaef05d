"""Tests for ``gpt_checkpoints.tasks.vision_io`` on tiny MNIST/CIFAR-10 fixtures."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from gpt_checkpoints.tasks.vision_io import (
    CIFAR10_FOLDER,
    CIFAR10_TEST_BATCH,
    CIFAR10_TRAIN_BATCHES,
    MNIST_FILES,
    read_cifar10,
    read_mnist,
)

N_TRAIN, N_TEST = 5, 3
CIFAR_PER_BATCH, CIFAR_TEST = 2, 3


def _idx_bytes(array: np.ndarray, magic: int) -> bytes:
    """An IDX file: big-endian uint32 magic, one big-endian uint32 per dim, then uint8 data."""
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write(path: Path, data: bytes, gzipped: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gzipped:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def _make_mnist(folder: Path, gzipped: bool = False, seed: int = 0) -> dict[str, np.ndarray]:
    """Write the four MNIST IDX files into ``folder``; return the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, N_TRAIN, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, N_TEST, dtype=np.uint8),
    }
    for key, array in arrays.items():
        magic = 2051 if key.endswith("images") else 2049
        _write(folder / MNIST_FILES[key], _idx_bytes(array, magic), gzipped)
    return arrays


def _check_mnist(result: tuple[np.ndarray, ...], arrays: dict[str, np.ndarray]) -> None:
    x_tr, y_tr, x_te, y_te = result
    assert x_tr.dtype == np.uint8 and x_tr.shape == (N_TRAIN, 28, 28)
    assert y_tr.dtype == np.int64 and y_tr.shape == (N_TRAIN,)
    np.testing.assert_array_equal(x_tr, arrays["train_images"])
    np.testing.assert_array_equal(y_tr, arrays["train_labels"])
    np.testing.assert_array_equal(x_te, arrays["test_images"])
    np.testing.assert_array_equal(y_te, arrays["test_labels"])


@pytest.mark.parametrize("gzipped", [False, True])
def test_mnist_round_trip(tmp_path: Path, gzipped: bool) -> None:
    arrays = _make_mnist(tmp_path / "MNIST" / "raw", gzipped=gzipped)
    _check_mnist(read_mnist(tmp_path), arrays)
    _check_mnist(read_mnist(str(tmp_path / "MNIST")), arrays)
    _check_mnist(read_mnist(tmp_path / "MNIST" / "raw"), arrays)


def test_mnist_mixed_plain_and_gzipped(tmp_path: Path) -> None:
    folder = tmp_path / "MNIST" / "raw"
    arrays = _make_mnist(folder, gzipped=True)
    for key in ("train_images", "test_labels"):
        gz = folder / (MNIST_FILES[key] + ".gz")
        (folder / MNIST_FILES[key]).write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    _check_mnist(read_mnist(tmp_path), arrays)


def test_mnist_missing_file_names_paths_and_remedy(tmp_path: Path) -> None:
    folder = tmp_path / "MNIST" / "raw"
    _make_mnist(folder)
    (folder / MNIST_FILES["test_labels"]).unlink()
    with pytest.raises(FileNotFoundError) as err:
        read_mnist(tmp_path)
    message = str(err.value)
    assert str(folder / MNIST_FILES["test_labels"]) in message
    assert MNIST_FILES["train_images"] not in message
    assert "torchvision.datasets.MNIST(root, download=True)" in message

    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        read_mnist(tmp_path / "empty")


@pytest.mark.parametrize("gzipped", [False, True])
def test_mnist_truncated_file(tmp_path: Path, gzipped: bool) -> None:
    folder = tmp_path / "MNIST" / "raw"
    _make_mnist(folder)
    path = folder / MNIST_FILES["train_images"]
    data = path.read_bytes()
    path.unlink()
    _write(path, data[:-100], gzipped)
    with pytest.raises(ValueError, match="truncated") as err:
        read_mnist(tmp_path)
    assert path.name in str(err.value) and "re-download" in str(err.value)


def test_mnist_truncated_gzip_stream(tmp_path: Path) -> None:
    folder = tmp_path / "MNIST" / "raw"
    _make_mnist(folder, gzipped=True)
    path = folder / (MNIST_FILES["train_images"] + ".gz")
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(ValueError, match="corrupted") as err:
        read_mnist(tmp_path)
    assert str(path) in str(err.value)


def test_mnist_bad_magic_and_count_mismatch(tmp_path: Path) -> None:
    folder = tmp_path / "MNIST" / "raw"
    arrays = _make_mnist(folder)
    path = folder / MNIST_FILES["train_labels"]
    path.write_bytes(_idx_bytes(arrays["train_labels"], 2051))
    with pytest.raises(ValueError, match="magic number 2051, expected 2049"):
        read_mnist(tmp_path)
    path.write_bytes(_idx_bytes(arrays["train_labels"][:-1], 2049))
    with pytest.raises(ValueError, match="5 images but .* 4 labels"):
        read_mnist(tmp_path)


def test_mnist_matches_torchvision(tmp_path: Path) -> None:
    try:
        from torchvision.datasets import MNIST
    except Exception as err:  # noqa: BLE001 - any import failure means torchvision is unusable
        pytest.skip(f"torchvision unavailable: {err}")
    _make_mnist(tmp_path / "MNIST" / "raw")
    x_tr, y_tr, x_te, y_te = read_mnist(tmp_path)
    for train, x, y in ((True, x_tr, y_tr), (False, x_te, y_te)):
        ds = MNIST(str(tmp_path), train=train, download=False)
        np.testing.assert_array_equal(ds.data.numpy(), x)
        np.testing.assert_array_equal(ds.targets.numpy(), y)
        assert ds.targets.numpy().dtype == y.dtype


class _Py2Pickler(pickle._Pickler):
    """Writes ``bytes`` and ``str`` as Python 2 strings (BINSTRING opcodes), like cPickle did.

    The original CIFAR-10 batches were written by Python 2, where every string is such a byte
    string; Python 3's own protocol-2 pickles would instead route bytes through
    ``_codecs.encode``, a global the restricted reader rightly refuses.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_string(self, obj: bytes | str) -> None:
        data = obj if isinstance(obj, bytes) else obj.encode("latin-1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_string
    dispatch[str] = _save_py2_string


def _py2_dumps(obj: object) -> bytes:
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def _cifar_batch(rng: np.random.Generator, k: int, name: str) -> dict[bytes, object]:
    return {
        b"batch_label": f"{name} of 5".encode(),
        b"labels": [int(v) for v in rng.integers(0, 10, k)],
        b"data": rng.integers(0, 256, (k, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(k)],
    }


def _make_cifar(folder: Path, old_numpy_names: bool = False) -> dict[str, dict]:
    """Write six tiny CIFAR-10 batches into ``folder``; return them by file name."""
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    batches = {n: _cifar_batch(rng, CIFAR_PER_BATCH, n) for n in CIFAR10_TRAIN_BATCHES}
    batches[CIFAR10_TEST_BATCH] = _cifar_batch(rng, CIFAR_TEST, CIFAR10_TEST_BATCH)
    for name, batch in batches.items():
        data = _py2_dumps(batch)
        if old_numpy_names:
            data = data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
        (folder / name).write_bytes(data)
    return batches


def _expected_cifar(batches: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    x = [b[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1) for b in batches]
    return np.concatenate(x), np.concatenate([np.asarray(b[b"labels"]) for b in batches])


@pytest.mark.parametrize("old_numpy_names", [False, True])
def test_cifar10_round_trip(tmp_path: Path, old_numpy_names: bool) -> None:
    folder = tmp_path / CIFAR10_FOLDER
    batches = _make_cifar(folder, old_numpy_names=old_numpy_names)
    assert (b"numpy.core.multiarray\n" in (folder / "test_batch").read_bytes()) == old_numpy_names
    x_train_exp, y_train_exp = _expected_cifar([batches[n] for n in CIFAR10_TRAIN_BATCHES])
    x_test_exp, y_test_exp = _expected_cifar([batches[CIFAR10_TEST_BATCH]])
    for root in (tmp_path, str(folder)):
        x_tr, y_tr, x_te, y_te = read_cifar10(root)
        assert x_tr.shape == (5 * CIFAR_PER_BATCH, 32, 32, 3) and x_tr.dtype == np.uint8
        assert y_tr.dtype == np.int64 and x_tr.flags.c_contiguous
        np.testing.assert_array_equal(x_tr, x_train_exp)
        np.testing.assert_array_equal(y_tr, y_train_exp)
        np.testing.assert_array_equal(x_te, x_test_exp)
        np.testing.assert_array_equal(y_te, y_test_exp)
    # Row layout: 1024 red values, then green, then blue, each row-major over 32x32.
    row = batches["data_batch_1"][b"data"][0]
    assert x_tr[0, 0, 1, 0] == row[1] and x_tr[0, 1, 0, 1] == row[1024 + 32]
    assert x_tr[0, 31, 31, 2] == row[3071]


def test_cifar10_missing_file_names_paths_and_remedy(tmp_path: Path) -> None:
    folder = tmp_path / CIFAR10_FOLDER
    _make_cifar(folder)
    (folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError) as err:
        read_cifar10(tmp_path)
    message = str(err.value)
    assert str(folder / "data_batch_3") in message and "data_batch_2" not in message
    assert "torchvision.datasets.CIFAR10(root, download=True)" in message


def test_cifar10_truncated_batch(tmp_path: Path) -> None:
    folder = tmp_path / CIFAR10_FOLDER
    _make_cifar(folder)
    path = folder / "data_batch_2"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(ValueError, match="corrupted") as err:
        read_cifar10(tmp_path)
    assert str(path) in str(err.value) and "re-download" in str(err.value)


def test_cifar10_wrong_shapes(tmp_path: Path) -> None:
    folder = tmp_path / CIFAR10_FOLDER
    batches = _make_cifar(folder)
    batch = {**batches["data_batch_4"], b"labels": [1]}
    (folder / "data_batch_4").write_bytes(_py2_dumps(batch))
    with pytest.raises(ValueError, match="data_batch_4.*'labels' has shape"):
        read_cifar10(tmp_path)


class _RunsShell:
    """Unpickling this would call ``os.system`` (``posix.system``) with a shell command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return (os.system, (self.command,))


def test_cifar10_refuses_forbidden_global_without_running_it(tmp_path: Path) -> None:
    folder = tmp_path / CIFAR10_FOLDER
    batches = _make_cifar(folder)
    marker = tmp_path / "pwned"
    evil = {**batches["data_batch_1"], b"filenames": _RunsShell(f"touch '{marker}'")}
    path = folder / "data_batch_1"
    path.write_bytes(_py2_dumps(evil))
    with pytest.raises(ValueError, match="refusing to load") as err:
        read_cifar10(tmp_path)
    assert str(path) in str(err.value) and "system" in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    "obj", [print, eval, np.load, np.frombuffer], ids=["print", "eval", "np.load", "frombuffer"]
)
def test_cifar10_refuses_other_globals(tmp_path: Path, obj: object) -> None:
    folder = tmp_path / CIFAR10_FOLDER
    _make_cifar(folder)
    (folder / CIFAR10_TEST_BATCH).write_bytes(_py2_dumps({b"data": obj}))
    with pytest.raises(ValueError, match="test_batch references the global"):
        read_cifar10(tmp_path)


def test_cifar10_refuses_python3_protocol2_pickles(tmp_path: Path) -> None:
    folder = tmp_path / CIFAR10_FOLDER
    batches = _make_cifar(folder)
    (folder / "data_batch_5").write_bytes(pickle.dumps(batches["data_batch_5"], protocol=2))
    with pytest.raises(ValueError, match=r"data_batch_5 references the global _codecs\.encode"):
        read_cifar10(tmp_path)
