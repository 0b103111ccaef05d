"""Checkpoint I/O: atomic writes and loaders that never unpickle arbitrary code.

Writes go to a temporary file in the target directory, are flushed to disk, then renamed over the
target, so a job killed mid-write leaves the previous checkpoint intact. Reads use
``torch.load(weights_only=True)`` or safetensors.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import pickle
import re
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from common.errors import NonFiniteError


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


def json_value(value: Any) -> Any:
    """``value`` as plain JSON data: tensors and arrays as lists, numpy scalars as numbers,
    NaN/inf as ``null`` (JSON has no NaN: other readers refuse Python's ``NaN``)."""
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # torch, numpy
        return json_value(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def json_bytes(value: Any, indent: int | None = 2) -> bytes:
    """``value`` (see :func:`json_value`) as strict JSON."""
    return json.dumps(json_value(value), indent=indent, allow_nan=False).encode()


def write_json(value: Any, path: str | os.PathLike, indent: int | None = 2) -> Path:
    """Write ``value`` as strict JSON (no NaN: ``null``) atomically; every JSON output uses this."""
    atomic_write_bytes(json_bytes(value, indent) + b"\n", path)
    return Path(path)


#: What to try when training goes non-finite (the messages of the NaN/inf guards).
ADVICE = (
    "lower optim.lr, train in full precision (trainer.precision=32-true) or clip gradients "
    "(trainer.gradient_clip_val=1.0); nan_policy=skip drops such steps instead"
)


def find_non_finite(obj: Any, prefix: str = "") -> str | None:
    """The key of the first floating tensor holding NaN or inf in a nested state, else ``None``."""
    if isinstance(obj, torch.Tensor):
        floating = obj.is_floating_point() or obj.is_complex()
        if floating and obj.numel() and not bool(torch.isfinite(obj).all()):
            return prefix or "<tensor>"
        return None
    if isinstance(obj, float):
        return None if math.isfinite(obj) else prefix or "<value>"
    if isinstance(obj, Mapping):
        items: Iterable = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return None
    for key, value in items:
        found = find_non_finite(value, f"{prefix}.{key}" if prefix else str(key))
        if found is not None:
            return found
    return None


def require_finite_state(state: Any, where: str) -> None:
    """Raise ``NonFiniteError`` when ``state`` holds a NaN or inf tensor (nothing is written)."""
    bad = find_non_finite(state)
    if bad is not None:
        raise NonFiniteError(
            f"refusing to write {where}: {bad} holds NaN or inf, so the previous file stays as it "
            f"was; {ADVICE}"
        )


def atomic_save(obj: Any, path: str | os.PathLike, check_finite: bool = True) -> None:
    """``torch.save`` to ``path`` atomically; ``.safetensors`` paths take a flat tensor dict.
    A state holding NaN or inf is refused (``NonFiniteError``) and nothing is written, unless
    ``check_finite=False`` (the caller checked what matters: Lightning checkpoints keep an inf
    "best score" in their callback state)."""
    path = Path(path)
    if check_finite:
        require_finite_state(obj, str(path))
    if path.suffix == ".safetensors":
        from safetensors.torch import save

        tensors = {k: v.detach().contiguous().cpu() for k, v in obj.items()}
        atomic_write_bytes(save(tensors), path)
        return
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(buffer.getvalue(), path)


_NEVER = (
    "loading it would run code from the file, which this project never does; re-save "
    "its tensors as a plain state dict (torch.save(model.state_dict(), ...)) or a safetensors file"
)


def _first_bytes(path: Path, n: int = 8) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def safe_load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """Load a checkpoint without executing code from it.

    ``.safetensors`` files go through safetensors; anything else through
    ``torch.load(weights_only=True)``, which accepts tensors, numbers, strings and containers
    (plus ``argparse.Namespace``, which official training checkpoints store as ``args`` and which
    only sets attributes). Files that are not checkpoints (empty, text, other binaries, truncated
    archives) and checkpoints holding other Python objects raise a ``ValueError`` that says which
    it is.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(
            f"{path} is a folder, not a checkpoint file: pass the file inside it (e.g. "
            f"{path}/checkpoints/last.ckpt) or the run folder where the command takes one"
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint not found: {path} (check the path, or train one first)"
        )
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes), not a checkpoint; pass a checkpoint file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        device = map_location if isinstance(map_location, str) else "cpu"
        try:
            return load_file(str(path), device=device)
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{path} is not a readable safetensors file ({err})") from err
    head = _first_bytes(path)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        kind = "text" if all(32 <= b < 127 or b in b"\t\r\n" for b in head) else "binary data"
        raise ValueError(
            f"{path} is not a PyTorch checkpoint (it holds {kind}); pass a file written by "
            "torch.save or safetensors"
        )
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        needs = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        what = f" (it needs {needs.group(1)})" if needs else ""
        raise ValueError(
            f"{path} holds Python objects other than tensors{what}; {_NEVER}"
        ) from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError) as err:
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(
            f"{path} is not a readable PyTorch checkpoint (damaged or truncated: {detail}); "
            "pass an intact file, or resume=<run dir> to use its newest readable checkpoint"
        ) from None


def checkpoint_kind(obj: Any, path: str | os.PathLike | None = None) -> str:
    """What a loaded file holds, in words that name the command it belongs to (for the errors of
    loaders handed the wrong file)."""
    if path is not None and str(path).endswith(".safetensors"):
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                fmt = (f.metadata() or {}).get("format", "")
        except Exception:  # noqa: BLE001 (unreadable metadata: judged by its tensors below)
            fmt = ""
        if fmt.startswith("gpt/"):
            return "a G.pt export (gpt.safetensors of python -m gpt_checkpoints.train)"
    if not isinstance(obj, dict):
        return f"a {type(obj).__name__}, not a checkpoint"
    hp = obj.get("hyper_parameters")
    hp = hp if isinstance(hp, dict) else {}
    if "state_dict" in obj:
        if "layout" in hp or "metric_range" in hp:
            return "a G.pt training checkpoint (python -m gpt_checkpoints.train)"
        if "regularization" in hp and "mixing" in hp:
            return "a StyleGAN2 training checkpoint (python -m gangealing.train_gan)"
        if "generator" in hp and "num_modes" in hp:
            return "a GANgealing training checkpoint (python -m gangealing.train)"
        if "diffusion" in hp and "model" in hp:
            return "a DiT training checkpoint (python -m diffusion_transformer.train)"
        return "a Lightning training checkpoint of another model"
    keys = set(obj)
    if obj.get("format") == "gangealing-congealer-v1":
        return "a GANgealing congealer (congealer.pt of python -m gangealing.train)"
    if "x_embedder.proj.weight" in keys:
        return "a DiT state dict (an ema.pt or an official DiT checkpoint)"
    if "t_ema" in keys:
        return "an official GANgealing congealing checkpoint"
    if "g_ema" in keys or ("g" in keys and "d" in keys):
        return "a StyleGAN2 checkpoint (rosinality format)"
    if {"G", "G_ema"} & keys:
        return "an official G.pt checkpoint"
    if "ema" in keys and "model" in keys:
        return "an official DiT training checkpoint"
    if keys and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return "a plain state dict of another model"
    return "a dict of another kind (no model weights this project knows)"


# The command and key that take each kind of file, by the words of ``checkpoint_kind`` (first
# match wins: a training checkpoint of train_gan or gangealing.train goes through its export).
_USE = (
    ("StyleGAN2 training", "python -m gangealing.train generator=<its run dir>/stylegan2.pt"),
    ("GANgealing training", "python -m gangealing.congeal ckpt=<its run dir>"),
    ("DiT", "it with python -m diffusion_transformer.sample ckpt=<file>"),
    ("G.pt", "it with python -m gpt_checkpoints.evaluate ckpt=<file>"),
    ("congeal", "it with python -m gangealing.congeal ckpt=<file>"),
    ("StyleGAN2", "it with python -m gangealing.train generator=<file>"),
)


def wrong_kind(path: str | os.PathLike, kind: str, expected: str, accepts: str = "") -> str:
    """One line under 200 characters for a loader handed the wrong kind of file: the file's name,
    the kind found (``checkpoint_kind``), what was expected, and the command and key that take it
    (else ``accepts``: what the loader takes)."""
    name = os.path.basename(os.fspath(path))
    name = name if len(name) <= 40 else name[:37] + "..."
    use = next((cmd for word, cmd in _USE if word in kind), None)
    kind = kind.split(" (")[0].split(", not")[0]  # "a DiT state dict (an ema.pt ...)" -> ...
    hint = f"; use {use}" if use else f"; pass {accepts}" if accepts else ""
    return f"{name} is {kind}, not {expected}{hint}"


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


def _nested_target(obj: Any) -> bool:
    if isinstance(obj, Mapping):
        return "_target_" in obj or any(_nested_target(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_nested_target(v) for v in obj)
    return False


def build_model(config: Mapping[str, Any], allowed: Iterable[str], *args: Any) -> Any:
    """``hydra.utils.instantiate(config, *args)`` for a ``model`` node (a ``_target_`` and its
    constructor's arguments) that a config or a checkpoint file holds, when its ``_target_`` is one
    of ``allowed`` and no argument holds a ``_target_`` of its own: a file never chooses the code
    that runs. The constructor's own error comes out unwrapped."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from omegaconf import DictConfig, OmegaConf

    if isinstance(config, DictConfig):
        config = OmegaConf.to_container(config, resolve=True)
    config = dict(config)
    allowed = list(allowed)
    target = config.get("_target_")
    if target not in allowed:
        raise ValueError(f"model._target_={target!r} is not a model here; use one of "
                         f"{', '.join(allowed)}")  # fmt: skip
    if _nested_target({k: v for k, v in config.items() if k != "_target_"}):
        raise ValueError(f"the model config of {target} holds a _target_ of its own; pass plain "
                         "values as its arguments")  # fmt: skip
    try:
        return instantiate(config, *args, _convert_="all")
    except InstantiationException as err:
        raise (err.__cause__ or err) from None
