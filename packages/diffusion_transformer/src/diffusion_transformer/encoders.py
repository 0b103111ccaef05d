"""REPA's frozen encoders: the patch tokens the projection loss aligns the DiT's hidden states with.

REPA (Yu et al. 2025, Eq. 8) compares ``projector(h_t)`` with ``y* = f(x)``, the patch tokens of a
frozen pretrained encoder ``f`` on the clean image. Two kinds here:

- DINOv2 ViT-B/14 and ViT-L/14, with and without registers, through timm, from a LOCAL weight
  file (Meta's ``dinov2_vit*14*_pretrain.pth`` or timm's ``model.safetensors``): never random
  weights. Preprocessing and the position-embedding resampling follow REPA's ``train.py``
  ``preprocess_raw_image`` and ``utils.load_encoders``.
- ``digits_convnet``: a small conv net trained by the project on the digits training split, for the
  offline demo. It is not ``common.metrics.digits.DigitsClassifier`` (another architecture, seed
  and head), so ``fd_digits``/``acc_digits`` do not score the network the DiT was aligned with.

Every encoder takes images as our datamodules yield them (``[N, C, H, W]`` floats in [-1, 1]).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from common.checkpoint import atomic_save, safe_load
from common.data.digits import digits_split, load_digits
from common.metrics.inputs import default_cache_dir

#: The config key that names the weight file of a pretrained encoder (in the error messages).
WEIGHTS_KEY = "repa.weights"

#: Our name -> (timm model name, embed_dim, Meta's released file).
DINOV2 = {
    "dinov2_vitb14": ("vit_base_patch14_dinov2", 768, "dinov2_vitb14_pretrain.pth"),
    "dinov2_vitl14": ("vit_large_patch14_dinov2", 1024, "dinov2_vitl14_pretrain.pth"),
    "dinov2_vitb14_reg": ("vit_base_patch14_reg4_dinov2", 768, "dinov2_vitb14_reg4_pretrain.pth"),
    "dinov2_vitl14_reg": ("vit_large_patch14_reg4_dinov2", 1024, "dinov2_vitl14_reg4_pretrain.pth"),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # timm IMAGENET_DEFAULT_MEAN / _STD (REPA's Normalize)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Encoder(nn.Module, ABC):
    """A frozen feature network (REPA ``train.py``: encoders in eval mode, outside the optimiser).

    ``train()`` keeps it in eval mode and every parameter has ``requires_grad=False``.
    """

    embed_dim: int

    def freeze(self) -> Encoder:
        self.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> Encoder:
        return super().train(False)

    @abstractmethod
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Our images (``[N, C, H, W]`` in [-1, 1]) -> the encoder's input."""

    @abstractmethod
    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed input -> patch tokens ``[N, T, embed_dim]`` (no prefix tokens)."""

    @staticmethod
    @abstractmethod
    def num_tokens(image_size: int) -> int:
        """``T`` for images of side ``image_size``."""

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Our images -> the targets ``y*`` of REPA's projection loss, ``[N, T, embed_dim]``."""
        return self.tokens(self.preprocess(images))


def dinov2_preprocess(images: torch.Tensor) -> torch.Tensor:
    """REPA ``train.py`` ``preprocess_raw_image(x, 'dinov2-...')`` on our [-1, 1] images: the uint8
    scale ``(x + 1) * 127.5``, ``/ 255``, ImageNet normalisation, then a bicubic resize to
    ``224 * (R // 256)`` (no antialias)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(
            f"DINOv2 encoders take RGB images [N, 3, H, W], got {tuple(images.shape)}; "
            "use an RGB dataset, or repa.encoder=digits_convnet for the digits"
        )
    size = dinov2_input_size(images.shape[-1])
    x = (images + 1) * 127.5 / 255
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return F.interpolate((x - mean) / std, size, mode="bicubic")


def dinov2_input_size(image_size: int) -> int:
    """REPA's DINOv2 input side: 224 for 256 px, 448 for 512 px."""
    if image_size < 256:
        raise ValueError(
            f"DINOv2 encoders need images of at least 256 px (REPA resizes R px to "
            f"224 * (R // 256)), got {image_size}; use data.image_size=256 or 512"
        )
    return 224 * (image_size // 256)


class DinoV2Encoder(Encoder):
    """DINOv2 through timm (REPA ``utils.load_encoders``): final-norm patch tokens
    (``x_norm_patchtokens``) at ``224 * (R // 256)`` px, ``pos_embed`` resampled once at load from
    the checkpoint's grid (bicubic, antialias, as timm ``resample_abs_pos_embed``).

    ``model_args`` override timm's architecture (tests build a tiny DINOv2-like ViT with them).
    """

    def __init__(
        self, name: str, weights: str | os.PathLike | None, image_size: int = 256, **model_args
    ) -> None:
        super().__init__()
        import timm

        timm_name, _, meta_file = DINOV2[name]
        self.files = f"{meta_file} or timm's model.safetensors"
        if weights is None:
            raise FileNotFoundError(
                f"{name} needs its pretrained weights and none were given; "
                f"set {WEIGHTS_KEY}=<path to {self.files}>"
            )
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"{name} weights not found: {path}; set {WEIGHTS_KEY}=<path to {self.files}>"
            )
        self.name = name
        self.image_size = image_size
        self.model = timm.create_model(
            timm_name,
            pretrained=False,
            img_size=dinov2_input_size(image_size),
            num_classes=0,
            **model_args,
        )
        self.embed_dim = self.model.embed_dim
        self.model.load_state_dict(self._converted(safe_load(path), path))
        self.freeze()

    def _converted(self, state: dict, path: Path) -> dict:
        """Meta's or timm's state dict -> this model's, via timm's ``checkpoint_filter_fn`` (which
        also resamples ``pos_embed``); a wrong file raises one line naming the first bad key."""
        from timm.models.vision_transformer import checkpoint_filter_fn

        if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
            raise ValueError(f"{path.name} is not a state dict; pass {self.files}")
        has_registers = "register_tokens" in state or "reg_token" in state
        wants_registers = self.model.reg_token is not None
        if has_registers != wants_registers:
            other = f"{self.name}_reg" if has_registers else self.name.removesuffix("_reg")
            held = "with" if has_registers else "without"
            raise ValueError(
                f"{path.name} holds DINOv2 weights {held} registers, not {self.name}; "
                f"use repa.encoder={other} or the {self.name} file"
            )
        expected = self.model.state_dict()
        try:
            converted = checkpoint_filter_fn(dict(state), self.model)
        except (RuntimeError, KeyError, ValueError) as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ValueError(
                f"{path.name} does not convert to {self.name} ({first}); pass {self.files}"
            ) from None
        missing = [k for k in expected if k not in converted]
        unexpected = [k for k in converted if k not in expected]
        wrong = [k for k in expected if k in converted and converted[k].shape != expected[k].shape]
        if missing or unexpected or wrong:
            key = (missing or unexpected or wrong)[0]
            what = "missing key" if missing else "unexpected key" if unexpected else "shape of"
            raise ValueError(
                f"{path.name} is not a {self.name} checkpoint ({what} {key}); pass {self.files}"
            )
        return converted

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] != self.image_size:
            raise ValueError(
                f"{self.name} was built for {self.image_size} px images, got "
                f"{images.shape[-1]} px; build it with image_size={images.shape[-1]}"
            )
        return dinov2_preprocess(images)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)[:, self.model.num_prefix_tokens :]

    @staticmethod
    def num_tokens(image_size: int) -> int:
        return (dinov2_input_size(image_size) // 14) ** 2


#: Everything the trained weights depend on; the cache file name is a hash of it.
DIGITS_SETTINGS = {"version": 1, "seed": 1, "epochs": 15, "batch_size": 64, "lr": 2e-3,
                   "holdout_fraction": 0.2, "split_seed": 0, "width": 64}  # fmt: skip


class DigitsConvNet(Encoder):
    """Conv 3x3 (32) - GELU - conv 3x3 stride 2 (width): its ``[width, 4, 4]`` map is the token grid
    of a patch-2 DiT on 8x8 digits (16 tokens); a linear head on the mean token trains it."""

    def __init__(self, width: int = DIGITS_SETTINGS["width"]) -> None:
        super().__init__()
        self.embed_dim = width
        self.stem = nn.Conv2d(1, 32, 3, padding=1)
        self.down = nn.Conv2d(32, width, 3, stride=2, padding=1)
        self.head = nn.Linear(width, 10)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Gray ``[N, 1, H, W]`` in [-1, 1], resized to 8x8 (bilinear, antialias) when needed."""
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(
                f"digits_convnet takes gray digits [N, 1, H, W], got "
                f"{tuple(images.shape)}; use it with data=digits"
            )
        if images.shape[-2:] != (8, 8):
            images = F.interpolate(images, (8, 8), mode="bilinear", antialias=True)
        return images

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.stem(x))).flatten(2).transpose(1, 2)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.gelu(self.tokens(x)).mean(1))

    @staticmethod
    def num_tokens(image_size: int) -> int:
        return 16


def train_digits_convnet(settings: dict = DIGITS_SETTINGS) -> tuple[DigitsConvNet, float]:
    """Train on the training split (``digits_split``, DiT's ``DigitsDataModule`` convention) by
    cross-entropy, deterministically (one CPU thread, fixed seeds); returns it and its held-out
    accuracy."""
    images, labels = load_digits()
    train, held = digits_split(len(images), settings["holdout_fraction"], settings["split_seed"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings["seed"])
            model = DigitsConvNet(settings["width"])
        g = torch.Generator().manual_seed(settings["seed"])
        opt = torch.optim.Adam(model.parameters(), lr=settings["lr"])
        x, y = images[train], labels[train]
        for _ in range(settings["epochs"]):
            for idx in torch.randperm(len(x), generator=g).split(settings["batch_size"]):
                loss = F.cross_entropy(model.logits(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        with torch.no_grad():
            accuracy = (model.logits(images[held]).argmax(1) == labels[held]).float().mean().item()
    finally:
        torch.set_num_threads(threads)
    return model.freeze(), accuracy


def digits_convnet_path(
    cache_dir: str | os.PathLike | None = None, settings: dict = DIGITS_SETTINGS
) -> Path:
    """``<cache_dir>/encoders/digits_convnet_<hash of settings>.safetensors``."""
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    root = Path(cache_dir or default_cache_dir()).expanduser()
    return root / "encoders" / f"digits_convnet_{key}.safetensors"


def load_digits_convnet(cache_dir: str | os.PathLike | None = None) -> DigitsConvNet:
    """The cached ``digits_convnet``; trained (seconds) and written atomically when absent."""
    path = digits_convnet_path(cache_dir)
    if path.is_file():
        try:
            state = safe_load(path)
            state.pop("heldout_accuracy")
            model = DigitsConvNet(DIGITS_SETTINGS["width"])
            model.load_state_dict(state)
            return model.freeze()
        except (ValueError, KeyError, RuntimeError, OSError) as err:
            warnings.warn(f"retraining digits_convnet: {path} is unreadable ({err})", stacklevel=2)
    model, accuracy = train_digits_convnet()
    atomic_save({**model.state_dict(), "heldout_accuracy": torch.tensor(accuracy)}, path)
    return model


ENCODERS = (*DINOV2, "digits_convnet")


def _names(names: str | Sequence[str]) -> list[str]:
    listed = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
    for name in listed:
        if name not in ENCODERS:
            raise ValueError(f"unknown encoder {name!r}; use one of {', '.join(ENCODERS)}")
    return listed


def z_dims(names: str | Sequence[str]) -> list[int]:
    """The feature widths of encoders (comma-separated names, as REPA's ``--enc-type``): the DiT's
    projector output dims (REPA ``train.py``: ``z_dims = [encoder.embed_dim ...]``)."""
    return [DINOV2[n][1] if n in DINOV2 else DIGITS_SETTINGS["width"] for n in _names(names)]


def build_encoder(
    name: str,
    weights: str | os.PathLike | None = None,
    image_size: int = 256,
    cache_dir: str | os.PathLike | None = None,
    tokens: int | None = None,
) -> Encoder:
    """A frozen encoder by name (``ENCODERS``) for images of side ``image_size``. ``weights``: the
    DINOv2 file; ``cache_dir``: where ``digits_convnet`` is cached; ``tokens``: the DiT's token
    count, which REPA's loss needs the encoder to match."""
    (name,) = _names([name])
    digits = name == "digits_convnet"
    found = (DigitsConvNet if digits else DinoV2Encoder).num_tokens(image_size)
    if tokens is not None and found != tokens:
        raise ValueError(
            f"{name} gives {found} tokens at {image_size} px but the DiT has {tokens}; "
            f"pick a patch size (or image size) that gives the DiT {found} tokens"
        )
    if not digits:
        return DinoV2Encoder(name, weights, image_size)
    if weights is not None:
        raise ValueError(
            f"digits_convnet is trained by the project and takes no weight file "
            f"(got {WEIGHTS_KEY}={weights}); leave {WEIGHTS_KEY} unset"
        )
    return load_digits_convnet(cache_dir)
