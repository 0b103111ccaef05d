"""The layers DiT's successors add (SiT, REPA, LightningDiT), under their official key names.

RMSNorm (``norm1.weight``...), qk-norm attention (``attn.q_norm``/``attn.k_norm``), the SwiGLU
feed-forward (``mlp.w12``/``mlp.w3``), the 2-D rotary embedding (buffers ``feat_rope.freqs_cos``
/``freqs_sin``) and REPA's projector MLP (``projectors.i.{0,2,4}``), so the released state dicts
load with ``strict=True`` into ``diffusion_transformer.models.DiT``; and DiT's own patchify and
the in-context and cross-attention blocks of its design study (Sec. 2.3.2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from common.nn.layers import Attention, CrossAttention, Mlp, modulate


class PatchEmbed(nn.Module):
    """Patchify (Fig. 2.4): ``[N, C, I, I]`` -> ``[N, (I/p)^2, d]`` by a stride-p convolution."""

    def __init__(
        self, input_size: int, patch_size: int, in_channels: int, hidden_size: int
    ) -> None:
        super().__init__()
        self.grid_size = input_size // patch_size
        self.num_patches = self.grid_size**2
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class InContextBlock(nn.Module):
    """Standard pre-LN ViT block; the condition travels as two extra tokens (Sec. 2.3.2)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(hidden_size, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class CrossAttentionBlock(nn.Module):
    """ViT block with multi-head cross-attention to the length-two sequence [t_emb, y_emb]."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads, qkv_bias=True)
        self.norm_cross = nn.LayerNorm(hidden_size, eps=1e-6)
        self.cross_attn = CrossAttention(hidden_size, num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(hidden_size, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        x = x + self.cross_attn(self.norm_cross(x), context)
        return x + self.mlp(self.norm2(x))


class FinalLayer(nn.Module):
    """Final (adaptive, for adaLN blocks) layer norm and linear decoder to p x p x out_channels."""

    def __init__(
        self,
        hidden_size: int,
        patch_size: int,
        out_channels: int,
        adaptive: bool = True,
        use_rmsnorm: bool = False,
    ) -> None:
        super().__init__()
        self.adaptive = adaptive
        if use_rmsnorm:
            self.norm_final = RMSNorm(hidden_size)
        else:
            self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=not adaptive, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        if adaptive:
            self.adaLN_modulation = nn.Sequential(
                nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size)
            )

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if self.adaptive:
            shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
            return self.linear(modulate(self.norm_final(x), shift, scale))
        return self.linear(self.norm_final(x))


def norm_layer(hidden_size: int, use_rmsnorm: bool) -> nn.Module:
    """The pre-modulation norm: RMSNorm (LightningDiT) or DiT's affine-free LayerNorm."""
    if use_rmsnorm:
        return RMSNorm(hidden_size)
    return nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)


def modulate_optional_shift(
    x: torch.Tensor, shift: torch.Tensor | None, scale: torch.Tensor
) -> torch.Tensor:
    """``modulate``, or ``x * (1 + scale)`` without a shift (LightningDiT ``wo_shift``)."""
    return x * (1 + scale.unsqueeze(1)) if shift is None else modulate(x, shift, scale)


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * weight``, computed in float32 (LightningDiT ``RMSNorm``)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * (
            self.weight
        )


class SwiGLU(nn.Module):
    """``w3(silu(a) * b)`` with ``[a, b] = w12(x)`` (LightningDiT ``SwiGLUFFN``, biases on)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden_dim)
        self.w3 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


def swiglu_hidden(hidden_size: int, mlp_ratio: float) -> int:
    """SwiGLU width of LightningDiT's block: 2/3 of the GELU MLP's (3072 for XL)."""
    return int(2 / 3 * int(hidden_size * mlp_ratio))


class RotaryEmbedding2D(nn.Module):
    """2-D rotary position embedding of a ``grid x grid`` token grid (EVA-02
    ``VisionRotaryEmbeddingFast`` as LightningDiT builds it with ``dim = head_dim / 2``).

    The first half of each head's channels rotates by the token's row, the second half by its
    column; pairs ``(z_2i, z_2i+1)`` rotate by ``pos * 10000^(-4i/head_dim)``. The tables are
    persistent buffers, as in the released files.
    """

    def __init__(self, head_dim: int, grid_size: int) -> None:
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"2-D RoPE needs a head dimension divisible by 4, got {head_dim}")
        half = head_dim // 2
        freqs = 1.0 / (10000 ** (torch.arange(0, half, 2)[: half // 2].float() / half))
        pos = torch.arange(grid_size) / grid_size * grid_size
        angles = torch.einsum("i,f->if", pos, freqs).repeat_interleave(2, dim=-1)  # [G, half]
        rows = angles[:, None, :].expand(grid_size, grid_size, half)
        cols = angles[None, :, :].expand(grid_size, grid_size, half)
        table = torch.cat([rows, cols], dim=-1).reshape(grid_size * grid_size, head_dim)
        self.register_buffer("freqs_cos", table.cos())
        self.register_buffer("freqs_sin", table.sin())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Rotate ``z`` of shape ``[N, heads, tokens, head_dim]``."""
        pairs = z.unflatten(-1, (-1, 2))
        rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
        return z * self.freqs_cos + rotated * self.freqs_sin


class NormRopeAttention(Attention):
    """Self-attention with optional qk-norm and 2-D RoPE, in that order (LightningDiT
    ``Attention``; REPA's timm ``Attention(qk_norm=True)``).

    qk-norm is ``LayerNorm(head_dim)`` with affine and eps 1e-5 (timm's default), or
    ``RMSNorm(head_dim)`` when ``use_rmsnorm``; without qk-norm and RoPE this is DiT's attention.
    """

    def __init__(
        self, dim: int, num_heads: int, qk_norm: bool = False, use_rmsnorm: bool = False
    ) -> None:
        super().__init__(dim, num_heads, qkv_bias=True)
        head_dim = dim // num_heads
        norm = RMSNorm if use_rmsnorm else nn.LayerNorm
        self.q_norm = norm(head_dim) if qk_norm else nn.Identity()
        self.k_norm = norm(head_dim) if qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor, rope: RotaryEmbedding2D | None = None) -> torch.Tensor:
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = rope(q), rope(k)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(n, t, d))


def projector(hidden_size: int, projector_hidden: int, z_dim: int) -> nn.Sequential:
    """REPA's projector (``models/sit.py`` ``build_mlp``): Linear-SiLU-Linear-SiLU-Linear."""
    return nn.Sequential(
        nn.Linear(hidden_size, projector_hidden),
        nn.SiLU(),
        nn.Linear(projector_hidden, projector_hidden),
        nn.SiLU(),
        nn.Linear(projector_hidden, z_dim),
    )
