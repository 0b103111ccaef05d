"""Transformer building blocks shared by DiT (thesis ch. 2) and G.pt (ch. 3).

Module and parameter names follow the released DiT checkpoints (``qkv``, ``proj``, ``fc1``,
``fc2``, ``mlp.0``/``mlp.2``, ``embedding_table``) so that state dicts load with ``strict=True``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Adaptive layer norm modulation (Sec. 2.3.2): ``x * (1 + scale) + shift`` per sample.

    ``x`` is ``[N, T, D]``; ``shift`` and ``scale`` are ``[N, D]`` regressed from the condition.
    """
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class Attention(nn.Module):
    """Multi-head self-attention on ``F.scaled_dot_product_attention`` (fused kernels on GPU)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(n, t, d))


class CrossAttention(nn.Module):
    """Multi-head attention from the token sequence to a short condition sequence.

    Used by the cross-attention DiT block (Sec. 2.3.2), where the condition is the length-two
    sequence ``[t_emb, y_emb]``.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        h = self.num_heads
        q = self.q(x).reshape(n, t, h, d // h).transpose(1, 2)
        k, v = self.kv(context).reshape(n, context.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(n, t, d))


class Mlp(nn.Module):
    """Two-layer MLP with tanh-approximated GELU, as in DiT and GPT-2."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def sinusoidal_embedding(x: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features ``[cos(x * f_i), sin(x * f_i)]`` of scalars, ADM/DiT convention.

    Frequencies are ``f_i = max_period ** (-i / (dim // 2))`` for ``i < dim // 2``; an odd
    ``dim`` is zero-padded. ``x`` may be fractional.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=x.device) / half
    )
    args = x[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class TimestepEmbedder(nn.Module):
    """Diffusion timestep -> vector: 256 sinusoidal frequencies then a SiLU MLP (Sec. 2.4)."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256) -> None:
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freq = sinusoidal_embedding(t, self.frequency_embedding_size)
        return self.mlp(freq.to(self.mlp[0].weight.dtype))


class FrequencyEmbedder(nn.Module):
    """Scalar (loss, return, diffusion step) -> vector, the G.pt scalar tokeniser (Sec. 3.2.2).

    ``scale`` multiplies the scalar before the sinusoid so that values in a small range (losses in
    [0, 3], say) still span many periods.
    """

    def __init__(
        self,
        hidden_size: int,
        frequency_embedding_size: int = 256,
        max_period: float = 10000.0,
        scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.max_period = max_period
        self.scale = scale
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        freq = sinusoidal_embedding(x * self.scale, self.frequency_embedding_size, self.max_period)
        return self.mlp(freq.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class label -> vector, with label dropout for classifier-free guidance (Sec. 2.3.1).

    Row ``num_classes`` of ``embedding_table`` is the learned null class; it exists whenever
    ``dropout_prob > 0`` (1001 rows for ImageNet in the released checkpoints).
    """

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float) -> None:
        super().__init__()
        use_cfg_embedding = int(dropout_prob > 0)
        self.embedding_table = nn.Embedding(num_classes + use_cfg_embedding, hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def token_drop(self, labels: torch.Tensor, force_drop_ids: torch.Tensor | None = None):
        """Replace labels by the null class: at random, or where ``force_drop_ids == 1``."""
        if force_drop_ids is None:
            drop_ids = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
        else:
            drop_ids = force_drop_ids == 1
        return torch.where(drop_ids, self.num_classes, labels)

    def forward(
        self, labels: torch.Tensor, train: bool, force_drop_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        if (train and self.dropout_prob > 0) or force_drop_ids is not None:
            labels = self.token_drop(labels, force_drop_ids)
        return self.embedding_table(labels)


def get_1d_sincos_pos_embed_from_grid(embed_dim: int, pos: np.ndarray) -> np.ndarray:
    """ViT/MAE 1D sine-cosine embedding: ``[sin(pos * w_i), cos(pos * w_i)]``, w_i = 1e4^(-2i/D)."""
    if embed_dim % 2:
        raise ValueError(f"sin-cos position embedding needs an even dimension, got {embed_dim}")
    omega = np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def get_2d_sincos_pos_embed(embed_dim: int, grid_size: int) -> np.ndarray:
    """Fixed 2D sine-cosine position embedding of a ``grid_size x grid_size`` patch grid.

    Returns ``[grid_size**2, embed_dim]`` in row-major patch order. The first half of the channels
    encodes the column index and the second half the row index, the MAE/DiT convention (the
    released checkpoints store this table as ``pos_embed``).
    """
    if embed_dim % 4:
        raise ValueError(f"2D sin-cos position embedding needs a multiple of 4, got {embed_dim}")
    coords = np.arange(grid_size, dtype=np.float32)
    cols, rows = np.meshgrid(coords, coords)
    emb_cols = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, cols)
    emb_rows = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, rows)
    return np.concatenate([emb_cols, emb_rows], axis=1)


class GPT2Block(nn.Module):
    """Non-causal pre-LN transformer block (GPT-2 layout without the mask), used by G.pt.

    ``x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))``.
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(hidden_size)
        self.attn = Attention(hidden_size, num_heads)
        self.ln_2 = nn.LayerNorm(hidden_size)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))
