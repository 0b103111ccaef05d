"""GANgealing losses (thesis Sec. 4.3.1, Eq. 4.5, Table 4.3).

L(T, c) = E_w[ l(T(x), y) + lambda_TV L_TV(T) + lambda_I L_I(T) ]  (Eq. 4.5)

- L_TV and L_I, the flow regularisers, are ``gangealing.align.flow`` (the flip cost of test-time
  inference uses L_TV too);
- :func:`perceptual_loss` builds the distance l: ``lpips`` (LPIPS-VGG, supervised), ``ssl_vgg``
  (VGG-16 trained with SimCLR, the "SSL" rows of Table 4.3) or ``pyramid_l1``, an offline option
  that needs no weights and is NOT a perceptual loss.

Every distance module maps two image batches (NCHW, RGB, [-1, 1]) to per-sample distances [N].
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

VGG16_BACKBONE_FILE = "vgg16-397923af.pth"
# Indices of the conv layers of torchvision's ``vgg16().features`` and the lpips slice holding each
# (lpips slices: [0, 4), [4, 9), [9, 16), [16, 23), [23, 30) -> relu1_2 ... relu5_3).
_VGG16_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
_SLICE_ENDS = (4, 9, 16, 23, 30)


def _vgg16_features_to_lpips(state_dict: Mapping[str, Tensor], source: str) -> dict[str, Tensor]:
    """Map ``features.I.{weight,bias}`` (optionally without ``features.`` or with ``module.``) of a
    torchvision-layout VGG-16 onto lpips' ``sliceK.I.{weight,bias}`` names."""
    features = {}
    for key, value in state_dict.items():
        match = re.fullmatch(r"(?:module\.)?(?:features\.)?(\d+)\.(weight|bias)", key)
        if match:
            features[(int(match.group(1)), match.group(2))] = value
    mapped, missing = {}, []
    for index in _VGG16_CONVS:
        slice_id = next(k for k, end in enumerate(_SLICE_ENDS, start=1) if index < end)
        for kind in ("weight", "bias"):
            if (index, kind) in features:
                mapped[f"slice{slice_id}.{index}.{kind}"] = features[(index, kind)]
            else:
                missing.append(f"features.{index}.{kind}")
    if missing:
        raise ValueError(
            f"{source} is not a VGG-16 state dict in torchvision layout: missing {missing[:4]}"
            f"{' ...' if len(missing) > 4 else ''}. Expected keys like 'features.0.weight'."
        )
    return mapped


def _load_state_dict(path: Path) -> Mapping[str, Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    return state


def _build_lpips(**kwargs) -> nn.Module:
    import lpips

    with warnings.catch_warnings():  # lpips builds torchvision's VGG with its former ``pretrained``
        warnings.simplefilter("ignore", UserWarning)
        return lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False, **kwargs)


class _FrozenDistance(nn.Module):
    """A frozen network kept in eval mode (dropout in lpips' heads stays off) that still passes
    gradients to its inputs."""

    def _freeze(self) -> None:
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> _FrozenDistance:
        return super().train(False)


def default_vgg_backbone() -> Path:
    """Where ``loss.name=lpips`` looks for its VGG-16 backbone when ``loss.backbone_path`` is
    unset: torch hub's cache (``<torch.hub.get_dir()>/checkpoints/vgg16-397923af.pth``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_BACKBONE_FILE


class LPIPSDistance(_FrozenDistance):
    """LPIPS-VGG (Table 4.3, "LPIPS"): lpips' linear heads (shipped in the wheel) on an ImageNet
    VGG-16 loaded from a local ``vgg16-397923af.pth``; nothing is downloaded.

    ``backbone_path``: the torchvision VGG-16 file; default ``<torch.hub.get_dir()>/checkpoints/``.
    """

    def __init__(self, backbone_path: str | os.PathLike | None = None):
        super().__init__()
        candidates = (
            [Path(backbone_path).expanduser()]
            if backbone_path is not None
            else [default_vgg_backbone()]
        )
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise FileNotFoundError(
                f"LPIPS needs the ImageNet VGG-16 backbone {VGG16_BACKBONE_FILE} (torchvision "
                f"layout), which is not downloaded automatically. Looked for: "
                f"{', '.join(str(p) for p in candidates)}. Copy the file there or set "
                f"loss.backbone_path=/path/to/{VGG16_BACKBONE_FILE}. Offline alternative: "
                "loss.name=pyramid_l1 (no weights, not perceptual) or loss.name=ssl_vgg with a "
                "local SimCLR VGG-16 checkpoint."
            )
        self.backbone_path = path
        backbone = _vgg16_features_to_lpips(_load_state_dict(path), str(path))
        self.model = _build_lpips(pretrained=True)
        self.model.net.load_state_dict(backbone, strict=True)
        self._freeze()

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return self.model(a, b).reshape(a.shape[0])


class SSLVGGDistance(_FrozenDistance):
    """Self-supervised perceptual distance (Table 4.3, "SSL"): VGG-16 features of a SimCLR
    checkpoint, unit-normalised per layer, squared differences summed over channels, averaged over
    space and summed over the five layers with uniform weights (lpips' ``lpips=False`` baseline),
    times ``scale`` (1/18 as in the official code, which keeps lambda_TV comparable).

    ``checkpoint_path``: a state dict of ``vgg16().features`` (``0.weight``, ...) or of a full
    torchvision VGG-16 (``features.0.weight``, ...), e.g. ``simclr_vgg_phase150.pt``.
    """

    def __init__(self, checkpoint_path: str | os.PathLike | None = None, scale: float = 1.0 / 18.0):
        super().__init__()
        if checkpoint_path is None or not Path(checkpoint_path).is_file():
            raise FileNotFoundError(
                f"ssl_vgg needs a SimCLR VGG-16 checkpoint (e.g. simclr_vgg_phase150.pt); got "
                f"checkpoint_path={checkpoint_path!r}, which is not a file. Set "
                "loss.checkpoint_path=/path/to/checkpoint, or use loss.name=lpips with "
                f"loss.backbone_path=/path/to/{VGG16_BACKBONE_FILE}, or loss.name=pyramid_l1 "
                "(offline, not perceptual)."
            )
        path = Path(checkpoint_path)
        self.scale = scale
        backbone = _vgg16_features_to_lpips(_load_state_dict(path), str(path))
        self.model = _build_lpips(pretrained=False, lpips=False)
        self.model.net.load_state_dict(backbone, strict=True)
        self._freeze()

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return self.model(a, b).reshape(a.shape[0]) * self.scale


class PyramidL1Distance(nn.Module):
    """OFFLINE option, NOT a perceptual loss: mean L1 over the bands of a Laplacian pyramid
    (kornia), averaged over ``levels`` bands (the last one is the low-pass residual). Needs no
    weights; coarse bands give the alignment loss a wider basin than pixel L1.
    """

    def __init__(self, levels: int = 4):
        super().__init__()
        if levels < 1:
            raise ValueError(f"levels must be >= 1, got {levels}")
        self.levels = levels

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        from kornia.geometry.transform import build_laplacian_pyramid

        levels = max(
            1, min(self.levels, a.shape[-1].bit_length() - 1, a.shape[-2].bit_length() - 1)
        )
        bands = build_laplacian_pyramid(a - b, levels)  # linear: pyramid(a) - pyramid(b)
        return torch.stack([band.abs().flatten(1).mean(1) for band in bands], dim=1).mean(1)


_DISTANCES = {"lpips": LPIPSDistance, "ssl_vgg": SSLVGGDistance, "pyramid_l1": PyramidL1Distance}


def perceptual_loss(name: str, **kwargs) -> nn.Module:
    """The distance l of Eqs. 4.2-4.3: ``lpips`` (backbone_path=...), ``ssl_vgg``
    (checkpoint_path=..., scale=...) or ``pyramid_l1`` (levels=...). Returns a module mapping two
    image batches [N, 3, H, W] in [-1, 1] to distances [N]."""
    if name not in _DISTANCES:
        raise ValueError(f"unknown perceptual loss {name!r}; choose one of {sorted(_DISTANCES)}")
    return _DISTANCES[name](**kwargs)
