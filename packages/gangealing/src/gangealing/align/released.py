"""The released GANgealing congealing models (``bicycle``, ``cat``, ``celeba``, ``cub``, ``dog``,
``tvmonitor``; clustering ``car`` and ``horse``, K = 4): reading their files.

A released file (official ``train.py``) holds ``g_ema``, ``t``, ``t_ema``, ``ll``, their
optimisers and schedulers, ``args`` (an ``argparse.Namespace``) and, for clustering models,
``classifier``. It is read with ``weights_only=True`` (``Namespace`` is the one allow-listed
class); the architecture is read from the tensors' shapes and checked against ``args``.
:func:`released_parts` gives ``gangealing.align.congealer.Congealer`` what it holds, with the
test-time settings the official applications use for each model (``PRESETS``, from official
``utils/download.py``: ``PRETRAINED_TEST_HYPERPARAMS``; flip inference on for K = 1, the cluster
classifier choosing cluster and mirror for K > 1).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gangealing.align.official_stn import OfficialClusterClassifier, OfficialComposedSTN
from gangealing.align.target import target_from_state
from gangealing.stylegan2.networks import generator_from_state

#: Official test-time settings per released model (padding, similarity iterations, clusters).
PRESETS: dict[str, dict[str, Any]] = {
    "bicycle": {"padding_mode": "reflection", "iters": 3, "num_heads": 1},
    "car": {"padding_mode": "reflection", "iters": 3, "num_heads": 4},
    "cat": {"padding_mode": "border", "iters": 3, "num_heads": 1},
    "cat_ssl_mix6": {"padding_mode": "border", "iters": 3, "num_heads": 1},
    "celeba": {"padding_mode": "border", "iters": 1, "num_heads": 1},
    "cub": {"padding_mode": "border", "iters": 1, "num_heads": 1},
    "dog": {"padding_mode": "border", "iters": 3, "num_heads": 1},
    "horse": {"padding_mode": "reflection", "iters": 3, "num_heads": 4},
    "tvmonitor": {"padding_mode": "reflection", "iters": 3, "num_heads": 1},
}
#: The official applications' defaults for other files (``applications/__init__.py``; flip
#: inference unless ``--no_flip_inference``).
DEFAULT_SETTINGS = {"padding_mode": "border", "iters": 1, "flips": True}
_CONSTANT_BUFFERS = (
    "input_downsample.kernel_horz",
    "input_downsample.kernel_vert",
    "warp_head.one_hot",
    "warp_head.warper.blur_filter",
    "warp_head.rebias",
)


def official_classifier_for(stn: OfficialComposedSTN) -> OfficialClusterClassifier:
    """The flip-aware cluster classifier matching a K-head official T (official
    ``train_cluster_classifier.py``: same trunk sizes and channels)."""
    return OfficialClusterClassifier(
        stn.num_heads, stn.flow_size, stn.supersize, stn.channel_multiplier, stn.max_channels
    )


def is_released(blob: Any) -> bool:
    return isinstance(blob, dict) and "t_ema" in blob and isinstance(blob["t_ema"], dict)


def infer_architecture(state: dict[str, torch.Tensor], prefix: str = "stns.0.") -> dict[str, Any]:
    """``OfficialComposedSTN`` arguments from a ``t_ema`` state dict's shapes."""
    stages = sorted({k.split(".")[1] for k in state if k.startswith("stns.")})
    if not stages:
        raise ValueError("no stns.* tensors: not the t_ema of a GANgealing ComposedSTN")
    transforms = ["flow" if f"stns.{s}.warp_head.flow_out.0.weight" in state else "similarity"
                  for s in stages]  # fmt: skip
    s = f"stns.{transforms.index('similarity') if 'similarity' in transforms else 0}."
    blocks = len({k.split(".")[3] for k in state if k.startswith(f"{s}convs.") and ".conv1." in k})
    flow_size = 2 ** (blocks + 2) if "similarity" in transforms else 2 ** (blocks + 4)
    kernel = state.get(f"{s}input_downsample.kernel_horz")
    supersize = flow_size * (kernel.shape[-1] // 2 if kernel is not None else 1)
    max_channels = int(state[f"{s}final_conv.0.weight"].shape[0])
    first = int(state[f"{s}convs.0.0.weight"].shape[0])
    base = {64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}.get(flow_size)
    multiplier = first / base if base else 0.5
    if "similarity" in transforms:
        heads = state[f"{s}warp_head.linear.weight"].shape[0] // 4
    else:
        heads = state[f"{s}warp_head.flow_out.2.weight"].shape[0] // 2
    flow_downsample = 8  # a similarity-only T has no flow head (8: official train.py's default)
    if "flow" in transforms:  # mask_out regresses K * 9 * flow_downsample ** 2 upsampling weights
        mask = state[f"stns.{transforms.index('flow')}.warp_head.mask_out.2.weight"]
        flow_downsample = math.isqrt(mask.shape[0] // (9 * heads))
    return {
        "transforms": transforms, "flow_size": flow_size, "supersize": supersize,
        "channel_multiplier": multiplier, "num_heads": int(heads),
        "flow_downsample": flow_downsample, "max_channels": max_channels,
    }  # fmt: skip


def _check_constants(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with its fixed buffers (filters, one-hot rows) checked against this model's;
    ones this model does not keep (``rebias`` of older official code) are dropped."""
    mine = model.state_dict()
    out = {}
    for key, value in state.items():
        if key.endswith(_CONSTANT_BUFFERS):
            if key not in mine:
                continue
            if not torch.equal(mine[key].to(value.dtype), value):
                raise ValueError(f"{key} differs from the official constant; not a GANgealing file")
        out[key] = value
    return out


def resolve_preset(path: str | Path, preset: str | None) -> str | None:
    if preset in (None, "auto"):
        stem = Path(path).stem
        return stem if stem in PRESETS else None
    if preset == "none":
        return None
    if preset not in PRESETS:
        raise ValueError(
            f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}, or preset=none for the"
            " official applications' defaults (iters=1, padding border)"
        )
    return preset


def released_parts(blob: dict[str, Any], path: str | Path, preset: str | None) -> dict[str, Any]:
    """The ``Congealer`` arguments of a released file: ``t_ema`` (architecture from its shapes,
    checked against ``args``), the test settings of its preset, its cluster classifier and, when
    the file has them, the target mode ``ll`` (official ``DirectionInterpolator``: ``lat_mean``,
    ``directions``, ``coefficients``; the mixing cutoff is ``args.inject``) and ``g_ema``."""
    state = blob["t_ema"]
    arch = infer_architecture(state)
    args = blob.get("args") or {}
    args = dict(args) if isinstance(args, dict) else vars(args)
    for key, inferred in (("flow_size", arch["flow_size"]), ("num_heads", arch["num_heads"])):
        if key in args and int(args[key]) != inferred:
            raise ValueError(
                f"{path}: its args say {key}={args[key]} but its t_ema tensors are those of "
                f"{key}={inferred}; the file is inconsistent, pass an unmodified released model"
            )
    name = resolve_preset(path, preset)
    if name is not None and PRESETS[name]["num_heads"] != arch["num_heads"]:
        raise ValueError(
            f"preset={name} is a model with {PRESETS[name]['num_heads']} cluster(s), but "
            f"{path} has {arch['num_heads']}; pass the matching preset= or preset=none"
        )
    settings = {**DEFAULT_SETTINGS, **(PRESETS[name] if name else {})}
    settings.pop("num_heads", None)
    stn = OfficialComposedSTN(**arch)
    stn.load_state_dict(_check_constants(state, stn), strict=True)
    classifier = None
    if blob.get("classifier") is not None:
        classifier = official_classifier_for(stn)
        classifier.load_state_dict(_check_constants(blob["classifier"], classifier), strict=True)
    target = generator = None
    if blob.get("ll") is not None and blob.get("g_ema") is not None:
        ll = blob["ll"]
        ours = {"w_mean": ll["lat_mean"], "directions": ll["directions"]}
        ours["coefficients"] = ll["coefficients"]
        target = target_from_state(ours, args.get("inject", 5))  # official --inject default: 5
        generator = generator_from_state(blob["g_ema"], f"{path}['g_ema']")
    return {
        "stn": stn, "size": arch["flow_size"], "settings": settings, "classifier": classifier,
        "target": target, "generator": generator, "preset": name,
    }  # fmt: skip
