"""Load DiT weights from our Lightning checkpoints, our ``ema.pt`` exports, or official files.

Official files are plain state dicts (``DiT-XL-2-256x256.pt``) or training checkpoints with
``model``/``ema``/``opt``/``args`` entries; both load here with ``weights_only=True``. Our
``ema.pt`` is a plain state dict with the official key names too (``torch.load`` gives only
tensors), whose zip archive holds ``dit.json`` (:func:`save_ema`): the DiT's constructor
arguments and the run's diffusion and VAE settings, so it loads with no extra key. The DiT
configuration of an official state dict is read off its tensor shapes (hidden size, depth, patch
size, channels, image size, classes, learned sigma, block design); the number of heads, which no
shape records, comes from Table 2.1 for the standard widths or from ``arch=DiT-XL/2``.
"""

from __future__ import annotations

import io
import json
import math
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from common.checkpoint import (
    atomic_write_bytes,
    checkpoint_kind,
    require_finite_state,
    safe_load,
    wrong_kind,
)
from diffusion_transformer.models import DIT_CONFIGS, DiT, DiT_models

_HEADS_BY_WIDTH = {size.hidden_size: size.num_heads for size in DIT_CONFIGS.values()}


_RECORD = "dit.json"  # the architecture record inside an ema.pt's zip archive


def save_ema(state_dict: dict[str, torch.Tensor], path: str | Path, meta: dict[str, Any]) -> None:
    """Write ``state_dict`` as a plain ``torch.save`` file (official key names: ``torch.load``
    returns just the tensors) whose zip archive also records ``meta`` (``model``: the DiT's
    constructor arguments, ``diffusion``, ``vae``) as ``dit.json``; atomically."""
    require_finite_state(state_dict, str(path))
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    with zipfile.ZipFile(buffer, "a") as archive:
        root = archive.namelist()[0].split("/")[0]
        archive.writestr(f"{root}/{_RECORD}", json.dumps(meta))
    atomic_write_bytes(buffer.getvalue(), path)


def read_record(path: str | Path) -> dict[str, Any]:
    """The ``dit.json`` record of an ``ema.pt`` written by :func:`save_ema`; ``{}`` for any other
    file (official checkpoints have none)."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith(f"/{_RECORD}")), None)
            return json.loads(archive.read(name)) if name else {}
    except (zipfile.BadZipFile, OSError):
        return {}


def infer_config(state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
    """DiT constructor arguments implied by a state dict's keys and shapes."""
    if "x_embedder.proj.weight" not in state_dict:
        raise ValueError(
            "this file is not a DiT state dict (no x_embedder.proj.weight); expected an official "
            "DiT checkpoint, an ema.pt written by our trainer, or a Lightning .ckpt of ours"
        )
    w = state_dict["x_embedder.proj.weight"]
    hidden, in_channels, patch = w.shape[0], w.shape[1], w.shape[-1]
    depth = 1 + max(int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k)))
    num_patches = state_dict["pos_embed"].shape[1]
    input_size = int(math.isqrt(num_patches)) * patch
    out = state_dict["final_layer.linear.weight"].shape[0] // (patch * patch)
    rows = state_dict["y_embedder.embedding_table.weight"].shape[0]
    if "blocks.0.adaLN_modulation.1.weight" in state_dict:
        chunks = state_dict["blocks.0.adaLN_modulation.1.weight"].shape[0] // hidden
        block = "adaln_zero" if chunks == 6 else "adaln"
    elif "blocks.0.cross_attn.q.weight" in state_dict:
        block = "cross_attention"
    else:
        block = "in_context"
    return {
        "input_size": input_size,
        "patch_size": patch,
        "in_channels": in_channels,
        "hidden_size": hidden,
        "depth": depth,
        "num_heads": _HEADS_BY_WIDTH.get(hidden),
        "learn_sigma": out == 2 * in_channels,
        # Official checkpoints keep a null-class row: rows = classes + 1 (1001 for ImageNet).
        "num_classes": rows - 1,
        "class_dropout_prob": 0.1,
        "block": block,
    }


def check_compatible(model: DiT, state_dict: dict[str, torch.Tensor]) -> None:
    """Raise an error naming the setting to change when ``state_dict`` does not fit ``model``."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    if missing or unexpected:
        found = infer_config(state_dict) if "x_embedder.proj.weight" in state_dict else {}
        raise ValueError(
            f"checkpoint does not match the model: missing keys {missing[:4]}, unexpected keys "
            f"{unexpected[:4]}. The checkpoint looks like depth={found.get('depth')}, "
            f"block={found.get('block')}: pick the matching model (arch=DiT-XL/2 for sample) "
            "or block"
        )
    hints = {
        "x_embedder.proj.weight": "model width, patch size or input channels (arch=DiT-XL/2 ...)",
        "pos_embed": "image size (image_size=256 for 32x32 latents, 512 for 64x64)",
        "y_embedder.embedding_table.weight": "number of classes (num_classes)",
        "final_layer.linear.weight": "learn_sigma, patch size or channels",
    }
    ordered = [k for k in hints if k in state_dict] + [k for k in state_dict if k not in hints]
    for key in ordered:  # the most telling mismatch first: width/patch before image size
        tensor = state_dict[key]
        if own[key].shape != tensor.shape:
            what = hints.get(key, "model configuration")
            raise ValueError(
                f"checkpoint tensor {key} has shape {tuple(tensor.shape)} but the model expects "
                f"{tuple(own[key].shape)}: set the {what} to the checkpoint's"
            )


def read_checkpoint(path: str | Path, use_ema: bool = True) -> tuple[dict, dict[str, Any]]:
    """-> (DiT state dict, metadata). Metadata holds ``model`` (the DiT's constructor arguments),
    ``diffusion``, ``vae`` and ``evaluate`` when the file is one of ours (.ckpt or ema.pt)."""
    obj = safe_load(path)
    kind = checkpoint_kind(obj, path)
    if not kind.startswith(("a DiT", "an official DiT")):
        accepts = "a DiT .ckpt, ema.pt, official DiT-XL-2-*.pt or diffusers DiT folder"
        raise ValueError(wrong_kind(path, kind, "a DiT checkpoint", accepts))
    if "state_dict" in obj:  # Lightning checkpoint of DiTModule
        prefix = "ema.module." if use_ema else "model."
        sd = {k[len(prefix) :]: v for k, v in obj["state_dict"].items() if k.startswith(prefix)}
        hp = obj.get("hyper_parameters", {})
        return sd, {k: hp.get(k) for k in ("model", "diffusion", "vae", "evaluate")}
    if "ema" in obj and isinstance(obj["ema"], dict):  # official training checkpoint
        args = vars(obj["args"]) if hasattr(obj.get("args"), "__dict__") else {}
        meta = {
            "official_args": {
                k: args[k] for k in ("model", "image_size", "num_classes") if k in args
            }
        }
        return (obj["ema"] if use_ema else obj["model"]), meta
    return obj, read_record(path)


def load_dit(
    path: str | Path,
    arch: str | None = None,
    image_size: int | None = None,
    num_classes: int | None = None,
    use_ema: bool = True,
    cfg_channels: int | None = None,
    num_heads: int | None = None,
) -> tuple[DiT, dict[str, Any]]:
    """Build a DiT and load ``path`` strictly. ``arch``/``image_size``/``num_classes`` (latent
    space, 8x VAE) pin the architecture; when omitted they are read off the checkpoint. A
    diffusers folder (``DiTPipeline`` or ``DiTTransformer2DModel``) is imported exactly."""
    from diffusion_transformer.diffusers_io import (
        diffusers_meta,
        import_diffusers,
        is_diffusers_folder,
    )

    if is_diffusers_folder(path):
        dit = import_diffusers(path)
        dit.cfg_channels = cfg_channels
        return dit, diffusers_meta(path)
    state_dict, meta = read_checkpoint(path, use_ema)
    config = dict(meta.get("model") or infer_config(state_dict))
    arch = arch or meta.get("official_args", {}).get("model")
    if arch is not None:
        if arch not in DiT_models:
            raise KeyError(f"unknown DiT model {arch!r}; valid names: {', '.join(DiT_models)}")
        size, patch = arch[len("DiT-") :].split("/")
        config.update(**DIT_CONFIGS[size]._asdict(), patch_size=int(patch))
    if image_size is not None:
        config["input_size"] = image_size // 8 if config.get("in_channels", 4) == 4 else image_size
    if num_classes is not None:
        config["num_classes"] = num_classes
    if num_heads is not None:
        config["num_heads"] = num_heads
    if config.get("num_heads") is None:
        raise ValueError(
            f"cannot tell the number of attention heads of a width-{config['hidden_size']} DiT: "
            "pass arch=<name> (e.g. arch=DiT-XL/2) or num_heads=<heads>"
        )
    config["cfg_channels"] = cfg_channels
    dit = DiT(**config)
    check_compatible(dit, state_dict)
    dit.load_state_dict(state_dict, strict=True)
    return dit.eval(), meta
