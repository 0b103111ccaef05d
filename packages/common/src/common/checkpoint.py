"""Checkpoint I/O: atomic writes and loaders that never unpickle arbitrary code.

Writes go to a temporary file in the target directory, are flushed to disk, then renamed over the
target, so a job killed mid-write leaves the previous checkpoint intact. Reads use
``torch.load(weights_only=True)`` or safetensors.
"""

from __future__ import annotations

import argparse
import io
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> None:
    """Write ``data`` to ``path`` atomically (temporary file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` atomically; ``.safetensors`` paths take a flat tensor dict."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import save

        tensors = {k: v.detach().contiguous().cpu() for k, v in obj.items()}
        atomic_write_bytes(save(tensors), path)
        return
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(buffer.getvalue(), path)


def safe_load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """Load a checkpoint without executing code from it.

    ``.safetensors`` files go through safetensors; anything else through
    ``torch.load(weights_only=True)``, which accepts tensors, numbers, strings and containers
    (plus ``argparse.Namespace``, which official training checkpoints store as ``args`` and which
    only sets attributes).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint not found: {path} (check the path, or train one first)"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        device = map_location if isinstance(map_location, str) else "cpu"
        return load_file(str(path), device=device)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path} holds Python objects other than tensors and plain containers, and loading "
            "it would run code from the file; re-save its tensors as a plain state dict or "
            f"safetensors file ({err})"
        ) from err
    except RuntimeError as err:
        raise ValueError(f"{path} is not a readable PyTorch checkpoint ({err})") from err


def plain_container(obj: Any) -> Any:
    """OmegaConf containers, dicts, lists and tuples -> nested dicts/lists of primitives, which
    ``torch.load(weights_only=True)`` and JSON accept (hyper-parameters stored in checkpoints)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(obj, (DictConfig, ListConfig)):
            return OmegaConf.to_container(obj, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, dict):
        return {str(k): plain_container(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain_container(v) for v in obj]
    return obj
