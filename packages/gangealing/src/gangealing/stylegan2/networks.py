"""StyleGAN2 generator and discriminator in plain PyTorch, state-dict compatible with rosinality.

GANgealing uses a pretrained StyleGAN2 [187] as its generator G (thesis Sec. 4.3): the
per-image targets G(mix(c, w)) feed the learned congealing vector c to the first layers of the
synthesis network and w to the later ones, the cutoff being a layer index in W+ space [188]
(Table 4.3). :class:`Generator` therefore exposes rosinality's ``forward`` with W+ input
(``input_is_latent=True`` and a ``[N, n_latent, style_dim]`` tensor), two-style mixing at
``inject_index`` and truncation.

Module names equal those of rosinality's ``stylegan2-pytorch`` ``model.py`` (the format of the
generators released by the GANgealing authors), so ``Generator.state_dict()`` keys such as
``style.1.weight``, ``conv1.conv.modulation.weight``, ``convs.0.conv.blur.kernel``,
``to_rgbs.0.upsample.kernel`` and ``noises.noise_0`` match checkpoints key for key.
:func:`load_generator` / :func:`save_generator` read and write that checkpoint format.

The channel table defaults to rosinality's (512 up to 32x32, then ``256 * channel_multiplier``
at 64, halving per resolution); pass ``channels={4: 16, 8: 16, 16: 8}`` to build tiny networks
for CPU tests. Such a checkpoint is still loadable: :func:`load_generator` reads the widths from
the tensor shapes.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from common.checkpoint import atomic_save, checkpoint_kind, safe_load, wrong_kind
from gangealing.stylegan2.ops import (
    DEFAULT_BLUR_KERNEL,
    ConstantInput,
    ConvLayer,
    EqualLinear,
    PixelNorm,
    ResBlock,
    StyledConv,
    ToRGB,
    channel_table,
    default_channels,
    resolution_log2,
)

__all__ = [
    "Discriminator",
    "Generator",
    "default_channels",
    "generator_from_state",
    "infer_generator_config",
    "load_generator",
    "save_generator",
]


class Generator(nn.Module):
    """StyleGAN2 generator (config E/F of [187]): mapping network + skip-connection synthesis.

    ``n_latent = 2 * log2(size) - 2`` style inputs (the W+ layers [188]): ``conv1`` and
    ``to_rgb1`` at 4x4 use latents 0 and 1; block k (resolution 2^(k+3)) uses 2k+1, 2k+2 for its
    two convolutions and 2k+3 for its ToRGB. The signature is rosinality's (``size, style_dim,
    n_mlp`` required, its defaults kept: the official API); ``channels`` (this package's addition)
    overrides the width table, and ``channel_multiplier`` is ignored when it is given.
    """

    def __init__(
        self,
        size: int,
        style_dim: int,
        n_mlp: int,
        channel_multiplier: int = 2,
        blur_kernel: Sequence[float] = DEFAULT_BLUR_KERNEL,
        lr_mlp: float = 0.01,
        channels: Mapping[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.size = size
        self.style_dim = style_dim
        self.n_mlp = n_mlp
        self.channel_multiplier = channel_multiplier
        self.log_size = resolution_log2(size)
        self.channels = channel_table(size, channel_multiplier, channels)
        mapping: list[nn.Module] = [PixelNorm()]
        for _ in range(n_mlp):
            mapping.append(
                EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation="fused_lrelu")
            )
        self.style = nn.Sequential(*mapping)

        ch = self.channels
        self.input = ConstantInput(ch[4])
        self.conv1 = StyledConv(ch[4], ch[4], 3, style_dim, blur_kernel=blur_kernel)
        self.to_rgb1 = ToRGB(ch[4], style_dim, upsample=False)
        self.num_layers = (self.log_size - 2) * 2 + 1
        self.convs = nn.ModuleList()
        self.upsamples = nn.ModuleList()  # empty; kept so the module tree matches the reference
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for layer_idx in range(self.num_layers):
            res = 2 ** ((layer_idx + 5) // 2)
            self.noises.register_buffer(f"noise_{layer_idx}", torch.randn(1, 1, res, res))
        in_channel = ch[4]
        for i in range(3, self.log_size + 1):
            out_channel = ch[2**i]
            self.convs.append(
                StyledConv(in_channel, out_channel, 3, style_dim, upsample=True,
                           blur_kernel=blur_kernel)
            )  # fmt: skip
            self.convs.append(
                StyledConv(out_channel, out_channel, 3, style_dim, blur_kernel=blur_kernel)
            )
            self.to_rgbs.append(ToRGB(out_channel, style_dim, blur_kernel=blur_kernel))
            in_channel = out_channel
        self.n_latent = self.log_size * 2 - 2

    def make_noise(self) -> list[Tensor]:
        """Fresh per-layer noise maps with the shapes of the ``noises.noise_{i}`` buffers."""
        device = self.input.input.device
        return [
            torch.randn_like(getattr(self.noises, f"noise_{i}"), device=device)
            for i in range(self.num_layers)
        ]

    @torch.no_grad()
    def mean_latent(self, n_latent: int) -> Tensor:
        """The mean of ``n_latent`` mapped z ~ N(0, I): the truncation centre, shape [1, D]."""
        z = torch.randn(n_latent, self.style_dim, device=self.input.input.device)
        return self.style(z).mean(0, keepdim=True)

    def get_latent(self, input: Tensor) -> Tensor:
        """Map z [N, D] to w [N, D] through the mapping network."""
        return self.style(input)

    def forward(
        self,
        styles: Sequence[Tensor] | Tensor,
        return_latents: bool = False,
        inject_index: int | None = None,
        truncation: float = 1,
        truncation_latent: Tensor | None = None,
        input_is_latent: bool = False,
        noise: Sequence[Tensor | None] | None = None,
        randomize_noise: bool = True,
    ) -> tuple[Tensor, Tensor | None]:
        """Synthesise images in [-1, 1] (roughly) from z, w or W+ codes, as rosinality does.

        ``styles`` holds one or two codes: z [N, D] (mapped first), or w [N, D] / W+
        [N, n_latent, D] with ``input_is_latent=True``. With two codes the first feeds latents
        ``[:inject_index]`` and the second the rest (style mixing; a random index when None).
        ``truncation < 1`` pulls every code towards ``truncation_latent``. ``noise`` gives one
        map per layer; otherwise fresh noise (``randomize_noise``) or the stored buffers.
        Returns ``(image, latent)`` with the [N, n_latent, D] latent when ``return_latents``.
        """
        if isinstance(styles, Tensor):
            styles = [styles]
        if not input_is_latent:
            styles = [self.style(s) for s in styles]
        if noise is None:
            if randomize_noise:
                noise = [None] * self.num_layers
            else:
                noise = [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]
        if truncation < 1:
            if truncation_latent is None:
                raise ValueError(
                    "truncation < 1 needs truncation_latent; pass G.mean_latent(4096) or the "
                    "checkpoint's latent_avg"
                )
            styles = [truncation_latent + truncation * (s - truncation_latent) for s in styles]

        if len(styles) < 2:
            latent = styles[0]
            if latent.ndim < 3:
                latent = latent.unsqueeze(1).repeat(1, self.n_latent, 1)
            elif latent.shape[1] != self.n_latent:
                raise ValueError(
                    f"a W+ code needs shape [N, {self.n_latent}, {self.style_dim}] for a "
                    f"{self.size}px generator, got {list(latent.shape)}"
                )
        else:
            if inject_index is None:
                inject_index = random.randint(1, self.n_latent - 1)
            latent = torch.cat(
                [
                    styles[0].unsqueeze(1).repeat(1, inject_index, 1),
                    styles[1].unsqueeze(1).repeat(1, self.n_latent - inject_index, 1),
                ],
                dim=1,
            )

        out = self.conv1(self.input(latent), latent[:, 0], noise=noise[0])
        skip = self.to_rgb1(out, latent[:, 1])
        i = 1
        for conv1, conv2, noise1, noise2, to_rgb in zip(
            self.convs[::2], self.convs[1::2], noise[1::2], noise[2::2], self.to_rgbs, strict=True
        ):
            out = conv1(out, latent[:, i], noise=noise1)
            out = conv2(out, latent[:, i + 1], noise=noise2)
            skip = to_rgb(out, latent[:, i + 2], skip)
            i += 2
        return skip, (latent if return_latents else None)


class Discriminator(nn.Module):
    """StyleGAN2 residual discriminator with minibatch standard deviation (group 4, 1 feature)."""

    def __init__(
        self,
        size: int,
        channel_multiplier: int = 2,
        blur_kernel: Sequence[float] = DEFAULT_BLUR_KERNEL,
        channels: Mapping[int, int] | None = None,
    ) -> None:
        super().__init__()
        log_size = resolution_log2(size)
        ch = channel_table(size, channel_multiplier, channels)
        convs: list[nn.Module] = [ConvLayer(3, ch[size], 1)]
        in_channel = ch[size]
        for i in range(log_size, 2, -1):
            out_channel = ch[2 ** (i - 1)]
            convs.append(ResBlock(in_channel, out_channel, blur_kernel))
            in_channel = out_channel
        self.convs = nn.Sequential(*convs)
        self.stddev_group = 4
        self.stddev_feat = 1
        self.final_conv = ConvLayer(in_channel + 1, ch[4], 3)
        self.final_linear = nn.Sequential(
            EqualLinear(ch[4] * 4 * 4, ch[4], activation="fused_lrelu"),
            EqualLinear(ch[4], 1),
        )

    def forward(self, input: Tensor) -> Tensor:
        """Realness logits [N, 1]; N must be a multiple of min(N, 4) (the stddev group)."""
        out = self.convs(input)
        batch, channel, height, width = out.shape
        group = min(batch, self.stddev_group)
        if batch % group:
            raise ValueError(
                f"the minibatch-stddev layer needs a batch size divisible by {group}, got {batch}; "
                "use a batch size that is a multiple of 4"
            )
        stddev = out.view(group, -1, self.stddev_feat, channel // self.stddev_feat, height, width)
        stddev = torch.sqrt(stddev.var(0, unbiased=False) + 1e-8)
        stddev = stddev.mean([2, 3, 4], keepdim=True).squeeze(2)
        stddev = stddev.repeat(group, 1, height, width)
        out = self.final_conv(torch.cat([out, stddev], 1))
        return self.final_linear(out.view(batch, -1))


_FORMAT = (
    "a rosinality stylegan2-pytorch checkpoint: a dict {'g_ema': generator state dict} with "
    "optional 'g', 'd', 'latent_avg' and 'args' entries, written by torch.save or save_generator"
)
_CONVERT = (
    "convert it to rosinality format first (convert_weight.py in rosinality/stylegan2-pytorch "
    "turns NVlabs StyleGAN2 .pkl files into such .pt files)"
)


# The command and key that take each kind of file (by the words of ``checkpoint_kind``).
def _first_keys(d: Mapping[str, Any], n: int = 8) -> str:
    keys = [str(k) for k in d]
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def _select_state_dict(ckpt: Mapping[str, Any], key: str, path: os.PathLike) -> Mapping[str, Any]:
    """``ckpt[key]``; a flat ``"{key}.*"`` safetensors dict or a bare state dict also works."""
    if key in ckpt:
        state = ckpt[key]
        if not isinstance(state, Mapping):
            raise ValueError(
                f"{path}[{key!r}] is a {type(state).__name__}, not a state dict; expected {_FORMAT}"
            )
        return state
    prefix = f"{key}."
    flat = {k[len(prefix) :]: v for k, v in ckpt.items() if str(k).startswith(prefix)}
    if flat:
        return flat
    if ckpt and all(isinstance(v, Tensor) for v in ckpt.values()):
        return ckpt  # a bare state dict, checked by infer_generator_config
    raise ValueError(
        f"{path} is {checkpoint_kind(ckpt, path)} with no {key!r} entry (its keys: "
        f"{_first_keys(ckpt)}); expected {_FORMAT}. Pass key='g' to load the non-averaged "
        "generator when the file has one"
    )


def infer_generator_config(state: Mapping[str, Any], where: str = "state dict") -> dict[str, Any]:
    """Generator arguments read from the tensor shapes of a rosinality generator state dict.

    Returns ``size``, ``style_dim``, ``n_mlp``, ``channels`` (width per resolution) and
    ``channel_multiplier`` (None when the widths are not rosinality's table for any multiplier).
    """
    required = ("input.input", "conv1.conv.weight", "conv1.conv.modulation.weight")
    if not all(isinstance(state.get(k), Tensor) for k in required):
        nvlabs = any(str(k).startswith(("mapping.", "synthesis.")) for k in state)
        kind = "an NVlabs StyleGAN2/ADA state dict" if nvlabs else "some other model"
        raise ValueError(
            f"{where} is not a rosinality StyleGAN2 generator: it looks like {kind} (keys: "
            f"{_first_keys(state)}); {_CONVERT}"
        )
    n_mlp = 0
    while f"style.{n_mlp + 1}.weight" in state:
        n_mlp += 1
    n_blocks = 0
    while f"to_rgbs.{n_blocks}.conv.weight" in state:
        n_blocks += 1
    channels = {4: int(state["input.input"].shape[1])}
    for i in range(n_blocks):
        channels[2 ** (i + 3)] = int(state[f"to_rgbs.{i}.conv.weight"].shape[2])
    return {
        "size": 2 ** (n_blocks + 2),
        "style_dim": int(state["conv1.conv.modulation.weight"].shape[1]),
        "n_mlp": n_mlp,
        "channels": channels,
        "channel_multiplier": next(
            (
                cm
                for cm in (channels.get(64, 512) // 256, 2)
                if cm > 0 and all(default_channels(cm)[r] == c for r, c in channels.items())
            ),
            None,
        ),
    }


def load_generator(
    path: str | os.PathLike,
    size: int | None = None,
    style_dim: int | None = None,
    channel_multiplier: int | None = None,
    channels: Mapping[int, int] | None = None,
    key: str = "g_ema",
    map_location: Any = "cpu",
) -> Generator:
    """Build a :class:`Generator` from a rosinality checkpoint; load ``checkpoint[key]`` strictly.

    Architecture arguments left as None are inferred from the tensor shapes (the number of
    ``to_rgbs`` gives the resolution, ``conv1.conv.modulation.weight`` the style dimension,
    ``style.{i}`` the mapping depth, ``to_rgbs.{i}.conv.weight`` the widths); given ones are
    checked against the file. Reads with ``common.checkpoint.safe_load`` (no unpickling of code).
    """
    path = os.fspath(path)
    if path.endswith(".pkl"):
        raise ValueError(
            f"{path} is a pickle (NVlabs StyleGAN2 format), which cannot be read without running "
            f"code from it; {_CONVERT}"
        )
    ckpt = safe_load(path, map_location=map_location)
    kind = checkpoint_kind(ckpt, path)
    # rosinality files, released congealing checkpoints (their g_ema), bare or flat state dicts
    if not kind.startswith(("a StyleGAN2 checkpoint", "an official GANgealing", "a plain state")):
        raise ValueError(wrong_kind(path, kind, "a StyleGAN2 generator"))
    where = f"{path}[{key!r}]"
    state = _select_state_dict(ckpt, key, path)
    cfg = infer_generator_config(state, where)
    if size is not None and size != cfg["size"]:
        raise ValueError(
            f"{where} is a {cfg['size']}x{cfg['size']} generator but size={size} was requested; "
            f"pass size={cfg['size']} (or size=None to infer it), or load a {size}px checkpoint"
        )
    if style_dim is not None and style_dim != cfg["style_dim"]:
        raise ValueError(
            f"{where} has style_dim={cfg['style_dim']} but style_dim={style_dim} was requested; "
            "pass style_dim=None to infer it"
        )
    inferred = cfg["channels"]
    if channels is not None or channel_multiplier is not None:
        table = channels if channels is not None else default_channels(channel_multiplier)
        wanted = {r: table.get(r) for r in inferred}
        if wanted != inferred:
            raise ValueError(
                f"{where} has channel widths {inferred}, not {wanted} as requested; pass "
                "channel_multiplier=None and channels=None to read them from the checkpoint"
            )
    generator = generator_from_state(state, where)
    if isinstance(map_location, (str, torch.device)):
        generator.to(map_location)
    return generator


def generator_from_state(state: Mapping[str, Any], where: str = "state dict") -> Generator:
    """A :class:`Generator` with the architecture read from ``state`` (a rosinality ``g_ema``
    state dict, e.g. the one a GANgealing congealer file carries), loaded strictly."""
    cfg = infer_generator_config(state, where)
    multiplier = cfg["channel_multiplier"]
    generator = Generator(
        cfg["size"], cfg["style_dim"], cfg["n_mlp"], channel_multiplier=multiplier or 2,
        channels=cfg["channels"] if multiplier is None else None,
    )  # fmt: skip
    try:
        generator.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(
            f"{where} does not match a rosinality StyleGAN2 generator ({' '.join(str(err).split())}"
            f"); re-save it from rosinality's Generator or with save_generator, or {_CONVERT}"
        ) from err
    return generator


def save_generator(
    path: str | os.PathLike,
    g_ema: Generator,
    g: Generator | None = None,
    d: Discriminator | None = None,
    latent_avg: Tensor | None = None,
) -> None:
    """Write ``{'g_ema', 'g', 'd', 'latent_avg', 'args'}`` (rosinality's layout) atomically.

    ``args`` is a plain dict (``size``, ``latent``, ``n_mlp``, ``channel_multiplier``,
    ``channels``). A ``.safetensors`` path stores the tensors flat as ``"g_ema.<key>"`` etc.
    """
    ckpt: dict[str, Any] = {}
    for name, module in (("g_ema", g_ema), ("g", g), ("d", d)):
        if module is not None:
            ckpt[name] = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    if latent_avg is not None:
        ckpt["latent_avg"] = latent_avg.detach().cpu()
    if os.fspath(path).endswith(".safetensors"):
        flat = {
            f"{name}.{k}" if isinstance(value, dict) else name: v
            for name, value in ckpt.items()
            for k, v in (value.items() if isinstance(value, dict) else [("", value)])
        }
        atomic_save(flat, path)
        return
    ckpt["args"] = {
        "size": g_ema.size, "latent": g_ema.style_dim, "n_mlp": g_ema.n_mlp,
        "channel_multiplier": g_ema.channel_multiplier,
        "channels": {r: c for r, c in g_ema.channels.items() if r <= g_ema.size},
    }  # fmt: skip
    atomic_save(ckpt, path)
