"""StyleGAN2 layers and blocks in plain PyTorch (no custom CUDA/C++ ops, runs on CPU and GPU).

Low-level ops (``upfirdn2d``, fused leaky ReLU, equalised layers, modulated convolution), the
blocks built from them (StyledConv, ToRGB, ConvLayer, ResBlock) and the channel table. These are
the building blocks of StyleGAN2 (Karras et al., "Analyzing and improving the image
quality of StyleGAN", CVPR 2020; reference [187] of the thesis, used as the generator G in
Sec. 4.3). Module and parameter names follow rosinality's ``stylegan2-pytorch`` (``model.py``),
the format in which the GANgealing authors released their generators, so that state dicts load
without renaming:

- equalised learning rate: weights are stored as N(0, 1) (divided by ``lr_mul`` for linear
  layers) and scaled at run time by ``lr_mul / sqrt(fan_in)``;
- fused leaky ReLU: ``sqrt(2) * leaky_relu(x + b, 0.2)``, the bias lives in the activation;
- FIR resampling (``upfirdn2d``) with the separable [1, 3, 3, 1] kernel, normalised to sum 1
  (times ``factor ** 2`` when upsampling, so that zero-insertion does not darken the image);
- weight modulation / demodulation (StyleGAN2 paper, Sec. 2.2, Eqs. 1-3, eps = 1e-8).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DEFAULT_BLUR_KERNEL = (1, 3, 3, 1)


def make_kernel(kernel: Sequence[float] | Tensor) -> Tensor:
    """A 2-D FIR kernel normalised to sum 1; a 1-D kernel ``k`` becomes the outer product k k^T."""
    k = torch.as_tensor(kernel, dtype=torch.float32)
    if k.ndim == 1:
        k = k[None, :] * k[:, None]
    return k / k.sum()


def _expand_pad(pad: Sequence[int]) -> tuple[int, int, int, int]:
    """(p0, p1) -> (x0, x1, y0, y1) with the same padding on both axes; 4-tuples pass through."""
    if len(pad) == 2:
        return pad[0], pad[1], pad[0], pad[1]
    if len(pad) == 4:
        return pad[0], pad[1], pad[2], pad[3]
    raise ValueError(f"pad must be (p0, p1) or (x0, x1, y0, y1), got {tuple(pad)}")


def upfirdn2d(
    input: Tensor, kernel: Tensor, up: int = 1, down: int = 1, pad: Sequence[int] = (0, 0)
) -> Tensor:
    """Upsample by zero insertion, pad, filter with the FIR ``kernel``, downsample.

    Same semantics as the CUDA op of StyleGAN2: ``up - 1`` zeros follow every input sample, the
    result is padded by ``pad`` (negative values crop), convolved (true convolution, so the
    kernel is flipped before ``conv2d``) and every ``down``-th sample is kept. The output size is
    ``(H * up + y0 + y1 - kh) // down + 1``. Implemented as one depthwise ``conv2d``
    (``groups=C``), faster than folding the channels into the batch as a single-channel
    convolution (BENCHMARKS.md, "StyleGAN2 training iteration").
    """
    x0, x1, y0, y1 = _expand_pad(pad)
    batch, channel, height, width = input.shape
    kh, kw = kernel.shape
    out = input
    if up > 1:
        out = out.reshape(batch, channel, height, 1, width, 1)
        out = F.pad(out, (0, up - 1, 0, 0, 0, up - 1))
        out = out.reshape(batch, channel, height * up, width * up)
    out = F.pad(out, (x0, x1, y0, y1))
    weight = torch.flip(kernel, (0, 1)).to(out).reshape(1, 1, kh, kw)
    return F.conv2d(out, weight.expand(channel, 1, kh, kw), stride=down, groups=channel)


def fused_leaky_relu(
    input: Tensor,
    bias: Tensor | None = None,
    negative_slope: float = 0.2,
    scale: float = math.sqrt(2),
) -> Tensor:
    """``scale * leaky_relu(input + bias)``; ``bias`` is added along dim 1 (channels)."""
    if bias is not None:
        shape = (1, bias.shape[0]) + (1,) * (input.ndim - 2)
        input = input + bias.reshape(shape)
    return F.leaky_relu(input, negative_slope) * scale


class FusedLeakyReLU(nn.Module):
    """Bias + leaky ReLU (slope 0.2) + gain sqrt(2), with the bias as parameter ``bias``."""

    def __init__(
        self,
        channel: int,
        bias: bool = True,
        negative_slope: float = 0.2,
        scale: float = math.sqrt(2),
    ) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channel)) if bias else None
        self.negative_slope = negative_slope
        self.scale = scale

    def forward(self, input: Tensor) -> Tensor:
        return fused_leaky_relu(input, self.bias, self.negative_slope, self.scale)


class PixelNorm(nn.Module):
    """Normalise each latent z to unit mean square over its features (input of the mapping)."""

    def forward(self, input: Tensor) -> Tensor:
        return input * torch.rsqrt(input.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class Upsample(nn.Module):
    """2x FIR upsampling of the ToRGB skip path; buffer ``kernel`` = kernel * factor^2."""

    def __init__(self, kernel: Sequence[float] = DEFAULT_BLUR_KERNEL, factor: int = 2) -> None:
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", make_kernel(kernel) * factor**2)
        p = self.kernel.shape[0] - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, input: Tensor) -> Tensor:
        return upfirdn2d(input, self.kernel, up=self.factor, down=1, pad=self.pad)


class Downsample(nn.Module):
    """2x FIR downsampling (low-pass then decimate); buffer ``kernel`` sums to 1."""

    def __init__(self, kernel: Sequence[float] = DEFAULT_BLUR_KERNEL, factor: int = 2) -> None:
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", make_kernel(kernel))
        p = self.kernel.shape[0] - factor
        self.pad = ((p + 1) // 2, p // 2)

    def forward(self, input: Tensor) -> Tensor:
        return upfirdn2d(input, self.kernel, up=1, down=self.factor, pad=self.pad)


class Blur(nn.Module):
    """FIR filtering without resampling, paired with a strided (transposed) convolution."""

    def __init__(
        self, kernel: Sequence[float], pad: tuple[int, int], upsample_factor: int = 1
    ) -> None:
        super().__init__()
        self.register_buffer("kernel", make_kernel(kernel) * upsample_factor**2)
        self.pad = pad

    def forward(self, input: Tensor) -> Tensor:
        return upfirdn2d(input, self.kernel, pad=self.pad)


class EqualConv2d(nn.Module):
    """Conv2d with equalised learning rate: weight ~ N(0, 1) scaled by 1/sqrt(fan_in)."""

    def __init__(
        self,
        in_channel: int,
        out_channel: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channel, in_channel, kernel_size, kernel_size))
        self.scale = 1 / math.sqrt(in_channel * kernel_size**2)
        self.stride = stride
        self.padding = padding
        self.bias = nn.Parameter(torch.zeros(out_channel)) if bias else None

    def forward(self, input: Tensor) -> Tensor:
        return F.conv2d(
            input, self.weight * self.scale, self.bias, stride=self.stride, padding=self.padding
        )


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate and a learning-rate multiplier ``lr_mul``.

    The stored weight is N(0, 1) / lr_mul and the effective weight ``weight * lr_mul /
    sqrt(in_dim)``, so the optimiser's step on it is scaled by ``lr_mul`` (0.01 in the mapping
    network). ``activation="fused_lrelu"`` applies :func:`fused_leaky_relu` with the bias.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        bias: bool = True,
        bias_init: float = 0.0,
        lr_mul: float = 1.0,
        activation: str | None = None,
    ) -> None:
        super().__init__()
        if activation not in (None, "fused_lrelu"):
            raise ValueError(f"activation must be None or 'fused_lrelu', got {activation!r}")
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init))) if bias else None
        self.activation = activation
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul

    def forward(self, input: Tensor) -> Tensor:
        bias = None if self.bias is None else self.bias * self.lr_mul
        if self.activation:
            return fused_leaky_relu(F.linear(input, self.weight * self.scale), bias)
        return F.linear(input, self.weight * self.scale, bias)


class ModulatedConv2d(nn.Module):
    """Modulated convolution (StyleGAN2 paper, Sec. 2.2).

    The per-sample style s = ``modulation(w)`` (an affine layer with bias initialised to 1)
    scales the input channels of the weight: w'_ijk = s_i w_ijk (Eq. 1). With ``demodulate`` the
    output channels are renormalised, w''_ijk = w'_ijk / sqrt(sum_ik w'_ijk^2 + 1e-8) (Eq. 3),
    so unit-variance inputs give unit-variance outputs. The batch is folded into the channels
    and run as one grouped convolution. ``upsample`` uses a stride-2 transposed convolution
    followed by a [1, 3, 3, 1] blur; ``downsample`` blurs then uses a stride-2 convolution.
    """

    def __init__(
        self,
        in_channel: int,
        out_channel: int,
        kernel_size: int,
        style_dim: int,
        demodulate: bool = True,
        upsample: bool = False,
        downsample: bool = False,
        blur_kernel: Sequence[float] = DEFAULT_BLUR_KERNEL,
    ) -> None:
        super().__init__()
        self.eps = 1e-8
        self.kernel_size = kernel_size
        self.in_channel = in_channel
        self.out_channel = out_channel
        self.upsample = upsample
        self.downsample = downsample
        factor = 2
        if upsample:
            p = (len(blur_kernel) - factor) - (kernel_size - 1)
            pad = ((p + 1) // 2 + factor - 1, p // 2 + 1)
            self.blur = Blur(blur_kernel, pad=pad, upsample_factor=factor)
        if downsample:
            p = (len(blur_kernel) - factor) + (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2, p // 2))
        self.scale = 1 / math.sqrt(in_channel * kernel_size**2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(
            torch.randn(1, out_channel, in_channel, kernel_size, kernel_size)
        )
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1)
        self.demodulate = demodulate

    def modulated_weight(self, style: Tensor) -> Tensor:
        """Per-sample weights [N, out, in, k, k] after modulation (and demodulation)."""
        batch = style.shape[0]
        s = self.modulation(style).reshape(batch, 1, self.in_channel, 1, 1)
        weight = self.scale * self.weight * s
        if self.demodulate:
            demod = torch.rsqrt(weight.pow(2).sum(dim=(2, 3, 4)) + self.eps)
            weight = weight * demod.reshape(batch, self.out_channel, 1, 1, 1)
        return weight

    def forward(self, input: Tensor, style: Tensor) -> Tensor:
        batch, in_channel, height, width = input.shape
        k = self.kernel_size
        weight = self.modulated_weight(style)
        if self.upsample:
            x = input.reshape(1, batch * in_channel, height, width)
            weight = weight.transpose(1, 2).reshape(batch * in_channel, self.out_channel, k, k)
            out = F.conv_transpose2d(x, weight, padding=0, stride=2, groups=batch)
            out = out.reshape(batch, self.out_channel, out.shape[-2], out.shape[-1])
            return self.blur(out)
        weight = weight.reshape(batch * self.out_channel, in_channel, k, k)
        if self.downsample:
            input = self.blur(input)
            stride, padding = 2, 0
        else:
            stride, padding = 1, self.padding
        x = input.reshape(1, batch * in_channel, input.shape[-2], input.shape[-1])
        out = F.conv2d(x, weight, padding=padding, stride=stride, groups=batch)
        return out.reshape(batch, self.out_channel, out.shape[-2], out.shape[-1])

    def extra_repr(self) -> str:
        return (
            f"{self.in_channel}, {self.out_channel}, {self.kernel_size}, "
            f"upsample={self.upsample}, downsample={self.downsample}"
        )


class NoiseInjection(nn.Module):
    """Adds per-pixel Gaussian noise scaled by a learned scalar ``weight`` (zero at init)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, image: Tensor, noise: Tensor | None = None) -> Tensor:
        if noise is None:
            batch, _, height, width = image.shape
            noise = image.new_empty(batch, 1, height, width).normal_()
        return image + self.weight * noise


class ConstantInput(nn.Module):
    """The learned 4x4 constant that starts the synthesis network (parameter ``input``)."""

    def __init__(self, channel: int, size: int = 4) -> None:
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channel, size, size))

    def forward(self, input: Tensor) -> Tensor:
        return self.input.repeat(input.shape[0], 1, 1, 1)


class ConvLayer(nn.Sequential):
    """[Blur] + EqualConv2d + [FusedLeakyReLU] as a Sequential (keys ``0.*``, ``1.*``, ...)."""

    def __init__(
        self,
        in_channel: int,
        out_channel: int,
        kernel_size: int,
        downsample: bool = False,
        blur_kernel: Sequence[float] = DEFAULT_BLUR_KERNEL,
        bias: bool = True,
        activate: bool = True,
    ) -> None:
        layers: list[nn.Module] = []
        if downsample:
            p = (len(blur_kernel) - 2) + (kernel_size - 1)
            layers.append(Blur(blur_kernel, pad=((p + 1) // 2, p // 2)))
            stride, padding = 2, 0
        else:
            stride, padding = 1, kernel_size // 2
        layers.append(
            EqualConv2d(in_channel, out_channel, kernel_size, padding=padding, stride=stride,
                        bias=bias and not activate)
        )  # fmt: skip
        if activate:
            layers.append(FusedLeakyReLU(out_channel, bias=bias))
        super().__init__(*layers)


class ResBlock(nn.Module):
    """Residual discriminator block: two 3x3 convs (the second downsamples, unless
    ``downsample=False`` as in the flow STN's last blocks) + 1x1 skip, / sqrt 2."""

    def __init__(
        self,
        in_channel: int,
        out_channel: int,
        blur_kernel: Sequence[float] = DEFAULT_BLUR_KERNEL,
        downsample: bool = True,
    ) -> None:
        super().__init__()
        self.conv1 = ConvLayer(in_channel, in_channel, 3, blur_kernel=blur_kernel)
        self.conv2 = ConvLayer(
            in_channel, out_channel, 3, downsample=downsample, blur_kernel=blur_kernel
        )
        self.skip = ConvLayer(
            in_channel, out_channel, 1, downsample=downsample, activate=False, bias=False,
            blur_kernel=blur_kernel,
        )  # fmt: skip

    def forward(self, input: Tensor) -> Tensor:
        return (self.conv2(self.conv1(input)) + self.skip(input)) / math.sqrt(2)


def default_channels(channel_multiplier: int = 2) -> dict[int, int]:
    """Rosinality's feature widths per resolution."""
    cm = channel_multiplier
    return {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * cm, 128: 128 * cm, 256: 64 * cm,
            512: 32 * cm, 1024: 16 * cm}  # fmt: skip


def resolution_log2(size: int) -> int:
    """log2(size), checking that size is a power of two >= 4."""
    log_size = int(math.log2(size)) if size > 0 else 0
    if size < 4 or 2**log_size != size:
        raise ValueError(f"size must be a power of two >= 4 (e.g. 256), got {size}")
    return log_size


def channel_table(
    size: int, channel_multiplier: int, channels: Mapping[int, int] | None
) -> dict[int, int]:
    """The width table to build with: ``channels`` if given (checked), else the default."""
    if channels is None:
        table = default_channels(channel_multiplier)
    else:  # keys may arrive as strings from a config
        table = {int(r): int(c) for r, c in channels.items()}
    missing = [2**i for i in range(2, resolution_log2(size) + 1) if 2**i not in table]
    if missing:
        raise ValueError(
            f"channels has no width for resolutions {missing}; give one entry per resolution "
            f"from 4 to {size}, e.g. {{4: 16, 8: 16, 16: 8}}, or channels=None for the default"
        )
    return table


class StyledConv(nn.Module):
    """Modulated 3x3 convolution + noise injection + fused leaky ReLU (one W+ layer)."""

    def __init__(
        self,
        in_channel: int,
        out_channel: int,
        kernel_size: int,
        style_dim: int,
        upsample: bool = False,
        blur_kernel: Sequence[float] = DEFAULT_BLUR_KERNEL,
        demodulate: bool = True,
    ) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(
            in_channel, out_channel, kernel_size, style_dim, demodulate=demodulate,
            upsample=upsample, blur_kernel=blur_kernel,
        )  # fmt: skip
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channel)

    def forward(self, input: Tensor, style: Tensor, noise: Tensor | None = None) -> Tensor:
        return self.activate(self.noise(self.conv(input, style), noise=noise))


class ToRGB(nn.Module):
    """1x1 modulated (not demodulated) projection to RGB, added to the upsampled skip image."""

    def __init__(
        self,
        in_channel: int,
        style_dim: int,
        upsample: bool = True,
        blur_kernel: Sequence[float] = DEFAULT_BLUR_KERNEL,
    ) -> None:
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, input: Tensor, style: Tensor, skip: Tensor | None = None) -> Tensor:
        out = self.conv(input, style) + self.bias
        if skip is not None:
            out = out + self.upsample(skip)
        return out
