"""Anti-aliased sampling of the released GANgealing models, in plain PyTorch.

The official Spatial Transformers sample with a mipmap (official
``models/spatial_transformers/antialiased_sampling.py``: ``MipmapWarp(max_num_levels=3.5)``) and
shrink their input with a tent filter (``BilinearDownsample``). Both are reproduced here from what
they compute, so a released model warps images exactly as it did when it was trained:

- ``mipmap_warp``: per output pixel, the level of detail is log2 of the largest distance (in
  input pixels) between its sampling point and those of its four neighbours (at least 1, at most
  ``max_levels - 1``); the input is blurred into a Gaussian stack (level i: i times a [1, 3, 3, 1]
  binomial filter with stride 2, upsampled back bilinearly, after a reflection pad to a power of two
  size), every level is sampled with ``grid_sample`` and the two levels around the pixel's level are
  mixed linearly. A zoom-out therefore averages the input instead of aliasing it.
- ``BilinearDownsample(stride)``: a separable triangle (tent) filter of width 2 x stride, applied
  with that stride after a reflection pad of stride / 2 (Richard Zhang's antialiased resize).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MIPMAP_LEVELS = 3.5  # the official warps' max_num_levels
_BINOMIAL = (1.0, 3.0, 3.0, 1.0)


def mipmap_levels(grid: Tensor, height: int, width: int, max_levels: float) -> Tensor:
    """Level of detail [N, H, W] of each output pixel of ``grid`` [N, H, W, 2] (normalised)."""
    scale = grid.new_tensor([width - 1.0, height - 1.0])
    coords = (grid + 1) * scale / 2  # input pixel units
    padded = F.pad(coords.permute(0, 3, 1, 2), (1, 1, 1, 1), mode="replicate").permute(0, 2, 3, 1)
    neighbours = (
        padded[:, 1:-1, :-2],
        padded[:, 1:-1, 2:],
        padded[:, :-2, 1:-1],
        padded[:, 2:, 1:-1],
    )
    # distances below one pixel count as one (log2 1 = 0, the finest level)
    dist = torch.stack([(n - coords).pow(2).sum(-1).clamp(min=1.0).sqrt() for n in neighbours])
    return dist.amax(0).log2().clamp(0.0, max_levels - 1.0)


def binomial_kernel() -> Tensor:
    """The official blur filter [1, 1, 4, 4]: [1, 3, 3, 1] outer product / 64."""
    k = torch.tensor(_BINOMIAL)
    return (k[:, None] * k[None, :] / k.sum() ** 2)[None, None]


def _blur_half(x: Tensor) -> Tensor:
    """One octave: reflection pad 1, binomial [1, 3, 3, 1] (outer product / 64), stride 2."""
    kernel = binomial_kernel().to(x).expand(x.shape[1], 1, 4, 4)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), kernel, stride=2, groups=x.shape[1])


def gaussian_stack(x: Tensor, num_levels: int) -> Tensor:
    """[N, C, D, H, W]: level i is ``x`` blurred by i octaves and upsampled back to full size.
    Sizes that are not powers of two are reflection-padded to the next one and cropped back."""
    size = x.shape[-1]
    pad_lo = pad_hi = 0
    if not math.log2(size).is_integer():
        total = 2 ** math.ceil(math.log2(size)) - size
        pad_lo, pad_hi = total // 2, total - total // 2
        x = F.pad(x, (pad_lo, pad_hi, pad_lo, pad_hi), mode="reflect")
    levels, current = [x], x
    for i in range(1, num_levels):
        current = _blur_half(current)
        levels.append(F.interpolate(current, scale_factor=2.0**i, mode="bilinear"))
    stack = torch.stack(levels, dim=2)
    if pad_lo or pad_hi:
        stack = stack[..., pad_lo:-pad_hi, pad_lo:-pad_hi]
    return stack


def mipmap_warp(
    images: Tensor, grid: Tensor, padding_mode: str = "border", max_levels: float = MIPMAP_LEVELS
) -> Tensor:
    """Sample ``images`` [N, C, H, W] at ``grid`` [N, h, w, 2] with mipmap anti-aliasing (module
    docstring; official ``MipmapWarp.forward``)."""
    n, c, h, w = images.shape
    levels = mipmap_levels(grid, h, w, max_levels)
    num_levels = int(levels.max().ceil().item()) + 1
    stack = gaussian_stack(images, num_levels)
    d = stack.shape[2]
    warped = F.grid_sample(
        stack.reshape(n, c * d, h, w), grid, padding_mode=padding_mode, align_corners=False
    ).view(n, c, d, *grid.shape[1:3])
    lo = levels.floor().long()[:, None, None].expand(n, c, 1, *levels.shape[1:])
    hi = levels.ceil().long()[:, None, None].expand(n, c, 1, *levels.shape[1:])
    a, b = warped.gather(2, lo)[:, :, 0], warped.gather(2, hi)[:, :, 0]
    return a + (levels % 1.0)[:, None] * (b - a)


class BilinearDownsample(nn.Module):
    """Tent-filter downsampling by an integer ``stride`` (official ``BilinearDownsample``; the
    buffers ``kernel_horz``/``kernel_vert`` are the official state-dict entries)."""

    def __init__(self, stride: int, channels: int = 3) -> None:
        super().__init__()
        ramp = torch.arange(1, 2 * stride + 1, 2, dtype=torch.float32)
        tent = torch.cat([ramp, ramp.flip(0)])
        tent = tent / tent.sum()
        self.stride, self.channels = stride, channels
        self.register_buffer("kernel_horz", tent.view(1, 1, 1, -1).repeat(channels, 1, 1, 1))
        self.register_buffer("kernel_vert", tent.view(1, 1, -1, 1).repeat(channels, 1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        pad = self.stride // 2
        x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        x = F.conv2d(x, self.kernel_horz, stride=(1, self.stride), groups=self.channels)
        return F.conv2d(x, self.kernel_vert, stride=(self.stride, 1), groups=self.channels)


class MipmapWarp(nn.Module):
    """``mipmap_warp`` as a module with the official state-dict entry ``blur_filter``."""

    def __init__(self, max_levels: float = MIPMAP_LEVELS) -> None:
        super().__init__()
        self.max_levels = max_levels
        self.register_buffer("blur_filter", binomial_kernel())

    def forward(self, images: Tensor, grid: Tensor, padding_mode: str = "border") -> Tensor:
        return mipmap_warp(images, grid, padding_mode, self.max_levels)
