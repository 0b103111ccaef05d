"""The released GANgealing congealing models (``bicycle``, ``cat``, ``celeba``, ``cub``, ``dog``,
``tvmonitor``; clustering ``car`` and ``horse``, K = 4) as aligners of real images.

A released file (official ``train.py``) holds ``g_ema``, ``t``, ``t_ema``, ``ll``, their
optimisers and schedulers, ``args`` (an ``argparse.Namespace``) and, for clustering models,
``classifier``. It is read with ``weights_only=True`` (``Namespace`` is the one allow-listed
class); the architecture is read from the tensors' shapes and checked against ``args``.
``ReleasedCongealer`` aligns images like :class:`gangealing.align.congealer.Congealer` does, with
the test-time settings the official applications use for each model (``PRESETS``, from official
``utils/download.py``: ``PRETRAINED_TEST_HYPERPARAMS``; flip inference on for K = 1, the cluster
classifier choosing cluster and mirror for K > 1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gangealing.align.official_stn import OfficialClusterClassifier, OfficialComposedSTN, unmirror
from gangealing.align.stn import STNOutput, check_rgb

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
#: The official applications' defaults for other files (``applications/__init__.py``).
DEFAULT_SETTINGS = {"padding_mode": "border", "iters": 1}
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
    return {
        "transforms": transforms, "flow_size": flow_size, "supersize": supersize,
        "channel_multiplier": multiplier, "num_heads": int(heads), "max_channels": max_channels,
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


class ReleasedCongealer(nn.Module):
    """An official congealing model with the interface of ``Congealer`` (module docstring)."""

    def __init__(
        self, architecture: dict[str, Any], settings: dict[str, Any], preset: str | None
    ) -> None:
        super().__init__()
        arch = dict(architecture)
        self.stn = OfficialComposedSTN(**arch)
        self.classifier: OfficialClusterClassifier | None = None
        self.architecture, self.settings, self.preset = arch, dict(settings), preset
        self.resolution, self.num_modes = arch["supersize"], arch["num_heads"]
        self.config = {"transform": "official", **arch, **self.settings, "preset": preset}

    @classmethod
    def from_checkpoint(
        cls, blob: dict[str, Any], path: str | Path, preset: str | None = None
    ) -> ReleasedCongealer:
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
        congealer = cls(arch, settings, name)
        congealer.stn.load_state_dict(_check_constants(state, congealer.stn), strict=True)
        if blob.get("classifier") is not None:
            congealer.classifier = official_classifier_for(congealer.stn)
            congealer.classifier.load_state_dict(
                _check_constants(blob["classifier"], congealer.classifier), strict=True
            )
        return congealer.eval()

    @classmethod
    def from_export(cls, blob: dict[str, Any], path: str | Path) -> ReleasedCongealer:
        """A ``transform=paper`` congealer written by this package's ``train``: the official
        network, tested with its training padding, one similarity pass and flip inference where
        it was trained with flips; a cluster classifier if ``cluster_classifier`` added one."""
        config, state = blob["config"], blob["stn"]
        arch = infer_architecture(state)
        if arch["num_heads"] != int(config["num_modes"]):
            raise ValueError(
                f"{path}: its config says num_modes={config['num_modes']} but its transformer has "
                f"{arch['num_heads']} heads; the file is inconsistent, export it again"
            )
        stn_cfg = dict(config.get("stn") or {})
        settings = {
            "padding_mode": stn_cfg.get("padding_mode") or "reflection",
            "iters": 1,
            "flips": bool(config.get("flips", False)),
        }
        congealer = cls(arch, settings, None)
        congealer.config.update(transform="paper", resolution=config["resolution"])
        congealer.stn.load_state_dict(state, strict=True)
        record = blob.get("classifier")
        if record is not None:
            congealer.classifier = official_classifier_for(congealer.stn)
            congealer.classifier.load_state_dict(record["state"], strict=True)
        congealer.generator_info = dict(blob.get("generator") or {})
        return congealer.eval()

    def _inputs(self, images: torch.Tensor) -> torch.Tensor:
        check_rgb(images)
        size = (self.resolution,) * 2
        if tuple(images.shape[-2:]) == size:
            return images
        return F.interpolate(images, size=size, mode="bilinear", antialias=True)

    def forward(
        self,
        images: torch.Tensor,
        cluster: int | None = None,
        output_size: int | None = None,
        iters: int | None = None,
        flips: bool | None = None,
        padding_mode: str | None = None,
    ) -> STNOutput:
        """Congeal ``images [N, 3, H, W]`` (resized to the model's input size); ``iters``,
        ``flips`` and ``padding_mode`` default to the model's test settings. K > 1: the cluster
        classifier picks each image's cluster and mirror (``cluster=k`` fixes the cluster)."""
        x = self._inputs(images)
        iters = self.settings["iters"] if iters is None else iters
        padding_mode = padding_mode or self.settings["padding_mode"]
        size = output_size or self.stn.flow_size
        if self.num_modes == 1:
            if flips is None:
                flips = self.settings.get("flips", True) and self.stn.predicts_flow
            return self.stn.congeal(
                x, output_size=size, iters=iters, flips=flips, padding_mode=padding_mode, cluster=0
            )
        if self.classifier is None and cluster is None:
            raise ValueError(
                f"this model has {self.num_modes} clusters and no cluster classifier: pass "
                f"cluster=<0..{self.num_modes - 1}>"
            )
        if self.classifier is not None and flips is not False:
            clusters, mirrored = self.classifier.assign(x, cluster)
        else:
            clusters = torch.full((x.shape[0],), int(cluster), device=x.device)
            mirrored = torch.zeros_like(clusters, dtype=torch.bool)
        x = torch.where(mirrored.view(-1, 1, 1, 1), x.flip(-1), x)
        out = self.stn.congeal(
            x, output_size=size, iters=iters, padding_mode=padding_mode, cluster=clusters
        )
        out = unmirror(out, mirrored)
        out.flipped = mirrored
        return out

    @torch.no_grad()
    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """Cluster of each image [N] (its mirror folded in)."""
        if self.classifier is None:
            raise ValueError("this model has no cluster classifier")
        return self.classifier.assign(self._inputs(images))[0]
