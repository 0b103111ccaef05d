"""Load DiT weights from our Lightning checkpoints, our ``ema.pt`` exports, or official files.

Official files are plain state dicts (``DiT-XL-2-256x256.pt``, ``SiT-XL-2-256x256.pt``, REPA's
``last.pt``) or training checkpoints with ``model``/``ema`` entries (``opt`` and ``args`` for
DiT, SiT and REPA, ``config`` for LightningDiT, whose released files may hold ``ema`` alone); all
load here with ``weights_only=True``. Our ``ema.pt`` is a plain state dict with the official key
names too (``torch.load`` gives only tensors), whose zip archive holds ``dit.json``
(:func:`save_ema`): the DiT's constructor arguments and the run's diffusion and VAE settings, so
it loads with no extra key. The DiT
configuration of an official state dict is read off its tensor shapes (hidden size, depth, patch
size, channels, image size, classes, learned sigma, block design, and the successors' options:
qk-norm, RMSNorm, SwiGLU, RoPE, ``wo_shift``, REPA's projectors); the number of heads comes from
the qk-norm or RoPE shapes, Table 2.1 for the standard widths, or ``arch=``. What no key records:
SiT's convention of returning half of a ``learn_sigma`` head (``arch=SiT`` or ``arch=SiT-XL/2``;
SiT's state dicts equal DiT's) and REPA's ``encoder_depth`` (the file's ``args``, else REPA's 8).
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
from diffusion_transformer.models import ARCHS, DIT_CONFIGS, FAMILIES, DiT

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


def infer_config(state_dict: dict[str, torch.Tensor], family: str = "DiT") -> dict[str, Any]:
    """DiT constructor arguments implied by a state dict's keys and shapes; the successors'
    options appear only when the file has them. Four adaLN chunks per block mean DiT's adaLN block,
    or LightningDiT's ``wo_shift`` in a file with LightningDiT's other keys or ``family``."""
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
    options = {
        "qk_norm": "blocks.0.attn.q_norm.weight" in state_dict,
        "use_rmsnorm": "blocks.0.norm1.weight" in state_dict,
        "use_swiglu": "blocks.0.mlp.w12.weight" in state_dict,
        "use_rope": "feat_rope.freqs_cos" in state_dict,
    }
    successor = family == "LightningDiT" or any(options.values())
    if "blocks.0.adaLN_modulation.1.weight" in state_dict:
        chunks = state_dict["blocks.0.adaLN_modulation.1.weight"].shape[0] // hidden
        options["wo_shift"] = chunks == 4 and successor
        block = "adaln_zero" if chunks == 6 or options["wo_shift"] else "adaln"
    elif "blocks.0.cross_attn.q.weight" in state_dict:
        block = "cross_attention"
    else:
        block = "in_context"
    head_dim = next(
        (state_dict[k].shape[-1] for k in ("blocks.0.attn.q_norm.weight", "feat_rope.freqs_cos")
         if k in state_dict),
        None,
    )  # fmt: skip
    projectors = sorted(
        {int(m.group(1)) for k in state_dict if (m := re.match(r"projectors\.(\d+)\.", k))}
    )
    if projectors:
        options["projector_dims"] = [
            state_dict[f"projectors.{i}.4.weight"].shape[0] for i in projectors
        ]
        options["projector_hidden"] = state_dict["projectors.0.0.weight"].shape[0]
    return {
        "input_size": input_size,
        "patch_size": patch,
        "in_channels": in_channels,
        "hidden_size": hidden,
        "depth": depth,
        "num_heads": hidden // head_dim if head_dim else _HEADS_BY_WIDTH.get(hidden),
        "learn_sigma": out == 2 * in_channels,
        # Official checkpoints keep a null-class row: rows = classes + 1 (1001 for ImageNet).
        "num_classes": rows - 1,
        "class_dropout_prob": 0.1,
        "block": block,
        **{k: v for k, v in options.items() if v},
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
            f"block={found.get('block')}: pick the matching model (arch=DiT-XL/2, SiT-XL/2 or "
            "LightningDiT-XL/1 for sample) or block"
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
    entries = isinstance(obj, dict) and isinstance(obj.get("ema"), dict)
    if entries and "x_embedder.proj.weight" in obj["ema"]:  # LightningDiT's may hold ema alone
        kind = "an official DiT-family training checkpoint"
    else:
        kind = checkpoint_kind(obj, path)
    if not kind.startswith(("a DiT", "an official DiT")):
        accepts = "a DiT .ckpt, ema.pt, official DiT-XL-2-*.pt or diffusers DiT folder"
        raise ValueError(wrong_kind(path, kind, "a DiT checkpoint", accepts))
    if "state_dict" in obj:  # Lightning checkpoint of DiTModule
        prefix = "ema.module." if use_ema else "model."
        sd = {k[len(prefix) :]: v for k, v in obj["state_dict"].items() if k.startswith(prefix)}
        hp = obj.get("hyper_parameters", {})
        return sd, {k: hp.get(k) for k in ("model", "diffusion", "vae", "evaluate")}
    if entries:  # official training checkpoint (DiT, SiT, REPA) or LightningDiT file
        if not use_ema and "model" not in obj:
            raise ValueError(
                f"{path} holds only EMA weights (no 'model' entry); drop use_ema=false"
            )
        args = vars(obj["args"]) if hasattr(obj.get("args"), "__dict__") else {}
        config = obj.get("config") if isinstance(obj.get("config"), dict) else {}
        if isinstance(config.get("model"), dict) and "model_type" in config["model"]:
            args = {"model": config["model"]["model_type"], **args}  # LightningDiT's train.py
        keys = ("model", "image_size", "num_classes", "encoder_depth")
        meta = {"official_args": {k: args[k] for k in keys if k in args}}
        return (obj["ema"] if use_ema else obj["model"]), meta
    return obj, read_record(path)


#: Image pixels per latent pixel by latent channels: SD's VAE (4, DiT/SiT/REPA) and VA-VAE
#: f16d32 (32, LightningDiT); other channel counts are pixel-space models.
LATENT_FACTOR = {4: 8, 32: 16}


def arch_settings(arch: str | None) -> tuple[str, dict[str, Any]]:
    """-> (family, the constructor arguments ``arch`` pins): a registry name (``ARCHS``:
    ``SiT-XL/2``) pins depth, width, heads and patch size, and a family name (``SiT``) nothing of
    those; both pin what no key records (SiT's ``return_sigma=False``) and tell ``wo_shift`` from
    DiT's adaLN block (LightningDiT). Everything else comes from the file."""
    if arch is not None and arch not in FAMILIES and arch not in ARCHS:
        raise KeyError(
            f"unknown DiT model {arch!r}; valid names: {', '.join(ARCHS)}, or a family name "
            f"({', '.join(FAMILIES)}) to read the sizes off the file"
        )
    family = "DiT" if arch is None else arch.split("-")[0]
    pinned = {k: v for k, v in FAMILIES[family][2].items() if k == "return_sigma"}
    if arch in ARCHS:
        sizes = ("depth", "hidden_size", "num_heads", "patch_size")
        pinned.update({k: ARCHS[arch][k] for k in sizes})
    return family, pinned


#: The diffusion config (``conf/diffusion/<name>.yaml``) an official file of each family was
#: trained with; a file with REPA's projectors is REPA's (its ``args`` call it ``SiT-XL/2``).
OFFICIAL_DIFFUSION = {"DiT": "ddpm", "SiT": "sit", "REPA": "repa", "LightningDiT": "lightningdit"}


def official_diffusion(model: DiT, meta: dict[str, Any]) -> dict[str, Any]:
    """The diffusion of an official file (``load_dit``'s ``family``), from the package's config."""
    from omegaconf import OmegaConf

    family = "REPA" if model.projector_dims else meta.get("family", "DiT")
    path = Path(__file__).parent / "conf" / "diffusion" / f"{OFFICIAL_DIFFUSION[family]}.yaml"
    return OmegaConf.to_container(OmegaConf.load(path))


def load_dit(
    path: str | Path,
    arch: str | None = None,
    image_size: int | None = None,
    num_classes: int | None = None,
    use_ema: bool = True,
    cfg_channels: int | None = None,
    num_heads: int | None = None,
    encoder_depth: int | None = None,
) -> tuple[DiT, dict[str, Any]]:
    """Build a DiT and load ``path`` strictly. ``arch`` (a name of ``ARCHS`` or a family,
    :func:`arch_settings`), ``image_size`` (``LATENT_FACTOR``) and ``num_classes`` pin the
    architecture; when omitted they are read off the checkpoint (a training file's ``args`` or
    ``config`` name its model; ``num_heads`` and REPA's ``encoder_depth`` set what no shape
    records). A diffusers folder (``DiTPipeline`` or ``DiTTransformer2DModel``) is imported
    exactly. The metadata also names the ``family`` (DiT, SiT, LightningDiT) that ``arch``, the
    file's ``args`` or its keys give, and always holds a ``diffusion``: an official file's is its
    recipe's (:func:`official_diffusion`)."""
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
    official = meta.get("official_args", {})
    family, pinned = arch_settings(arch or official.get("model"))
    config = dict(meta.get("model") or infer_config(state_dict, family))
    config.update(pinned)
    if family == "DiT" and any(config.get(k) for k in ("use_rope", "use_swiglu", "use_rmsnorm")):
        family = "LightningDiT"  # a file of LightningDiT's blocks (its released ones hold ema only)
    encoder_depth = encoder_depth or official.get("encoder_depth")
    if config.get("projector_dims") and encoder_depth is not None:
        config["encoder_depth"] = encoder_depth
    if image_size is not None:
        config["input_size"] = image_size // LATENT_FACTOR.get(config.get("in_channels", 4), 1)
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
    meta = {**meta, "family": family}
    return dit.eval(), {**meta, "diffusion": meta.get("diffusion") or official_diffusion(dit, meta)}
