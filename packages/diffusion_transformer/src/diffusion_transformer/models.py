"""Diffusion Transformers (DiT), thesis chapter 2.

One file, as in the official code: patchify, four conditioning block designs (Sec. 2.3.2, Fig. 2.3),
the linear decoder, the registry of the twelve Table 2.1 configurations, and the analytic Gflops
count. Parameter names equal the released checkpoints', so ``DiT-XL-2-256x256.pt`` loads with
``strict=True`` into ``DiT_models["DiT-XL/2"]()``.
"""

from __future__ import annotations

import torch
from torch import nn

from common.layers import (
    Attention,
    CrossAttention,
    LabelEmbedder,
    Mlp,
    TimestepEmbedder,
    get_2d_sincos_pos_embed,
    modulate,
)

BLOCK_TYPES = ("adaln_zero", "adaln", "in_context", "cross_attention")


#################################################################################
#                                  DiT blocks                                   #
#################################################################################


class DiTBlock(nn.Module):
    """adaLN-Zero block (Fig. 2.3): shift, scale and gate for attention and MLP regressed from c.

    The regression is zero-initialised (``initialize_weights``), so every gate starts at 0 and the
    block starts as the identity. ``zero_gates=False`` gives the vanilla adaLN block: shift and
    scale only, no gates (parameter ``adaLN_modulation.1`` has 4d outputs instead of 6d).
    """

    def __init__(
        self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, zero_gates: bool = True
    ) -> None:
        super().__init__()
        self.zero_gates = zero_gates
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        chunks = 6 if zero_gates else 4
        self.adaLN_modulation = nn.Sequential(
            nn.SiLU(), nn.Linear(hidden_size, chunks * hidden_size)
        )

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if self.zero_gates:
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(
                c
            ).chunk(6, dim=1)
            x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
            return x + gate_mlp.unsqueeze(1) * self.mlp(
                modulate(self.norm2(x), shift_mlp, scale_mlp)
            )
        shift_msa, scale_msa, shift_mlp, scale_mlp = self.adaLN_modulation(c).chunk(4, dim=1)
        x = x + self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        return x + self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


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
        self, hidden_size: int, patch_size: int, out_channels: int, adaptive: bool = True
    ) -> None:
        super().__init__()
        self.adaptive = adaptive
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


#################################################################################
#                                 Core DiT Model                                #
#################################################################################


class DiT(nn.Module):
    """Diffusion model with a transformer backbone.

    ``forward(x, t, y)`` maps a noised latent ``[N, C, I, I]``, integer (or real) timesteps ``[N]``
    and labels ``[N]`` to ``[N, 2C, I, I]`` (noise and variance values, ``learn_sigma=True``) or
    ``[N, C, I, I]``.
    """

    def __init__(
        self,
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.1,
        num_classes: int = 1000,
        learn_sigma: bool = True,
        block: str = "adaln_zero",
        cfg_channels: int | None = None,
    ) -> None:
        super().__init__()
        if block not in BLOCK_TYPES:
            raise ValueError(f"unknown block {block!r}: choose one of {', '.join(BLOCK_TYPES)}")
        if patch_size <= 0 or input_size % patch_size:
            raise ValueError(
                f"patch size {patch_size} does not divide the input size {input_size}: use a "
                "patch size that divides it (2, 4 or 8 for 32x32 latents) or resize the data"
            )
        if hidden_size % num_heads:
            raise ValueError(f"hidden size {hidden_size} is not divisible by {num_heads} heads")
        self.input_size = input_size
        self.learn_sigma = learn_sigma
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.patch_size = patch_size
        self.hidden_size = hidden_size
        self.depth = depth
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.num_classes = num_classes
        self.block = block
        self.cfg_channels = cfg_channels

        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        num_patches = self.x_embedder.num_patches
        # Fixed sin-cos embedding, stored as a frozen parameter as in the released checkpoints.
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, hidden_size), requires_grad=False)

        adaptive = block in ("adaln_zero", "adaln")
        if adaptive:
            blocks = [
                DiTBlock(hidden_size, num_heads, mlp_ratio, zero_gates=block == "adaln_zero")
                for _ in range(depth)
            ]
        elif block == "in_context":
            blocks = [InContextBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)]
        else:
            blocks = [CrossAttentionBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)]
        self.blocks = nn.ModuleList(blocks)
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels, adaptive)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """ViT init (xavier-uniform linears, zero biases) and DiT's zero-inits (Sec. 2.3.2)."""

        def _basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                torch.nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)

        self.apply(_basic_init)
        pos_embed = get_2d_sincos_pos_embed(self.hidden_size, self.x_embedder.grid_size)
        self.pos_embed.data.copy_(torch.from_numpy(pos_embed).float().unsqueeze(0))
        # Patchify as a linear layer on flattened patches.
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        nn.init.constant_(self.x_embedder.proj.bias, 0)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        # adaLN(-Zero): zero modulation, so gates start at 0 and shift/scale at identity.
        for block in self.blocks:
            if isinstance(block, DiTBlock):
                nn.init.constant_(block.adaLN_modulation[-1].weight, 0)
                nn.init.constant_(block.adaLN_modulation[-1].bias, 0)
        if self.final_layer.adaptive:
            nn.init.constant_(self.final_layer.adaLN_modulation[-1].weight, 0)
            nn.init.constant_(self.final_layer.adaLN_modulation[-1].bias, 0)
        nn.init.constant_(self.final_layer.linear.weight, 0)
        nn.init.constant_(self.final_layer.linear.bias, 0)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, T, p*p*C]`` -> ``[N, C, H, W]``."""
        c, p = self.out_channels, self.patch_size
        h = w = self.x_embedder.grid_size
        x = x.reshape(x.shape[0], h, w, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, h * p, w * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.input_size, self.input_size) or x.shape[1] != self.in_channels:
            raise ValueError(
                f"DiT built for [N, {self.in_channels}, {self.input_size}, {self.input_size}] "
                f"inputs got {tuple(x.shape)}"
            )
        x = self.x_embedder(x) + self.pos_embed
        t_emb = self.t_embedder(t)
        y_emb = self.y_embedder(y, self.training)
        if self.block == "in_context":
            x = torch.cat([t_emb.unsqueeze(1), y_emb.unsqueeze(1), x], dim=1)
            for block in self.blocks:
                x = block(x)
            x = self.final_layer(x[:, 2:], None)
        elif self.block == "cross_attention":
            context = torch.stack([t_emb, y_emb], dim=1)
            for block in self.blocks:
                x = block(x, context)
            x = self.final_layer(x, None)
        else:
            c = t_emb + y_emb
            for block in self.blocks:
                x = block(x, c)
            x = self.final_layer(x, c)
        return self.unpatchify(x)

    def forward_with_cfg(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, cfg_scale: float
    ) -> torch.Tensor:
        """Classifier-free guidance in the official calling convention (Sec. 2.3.1).

        ``x`` is ``[x; x]`` and ``y`` is ``[labels; null]`` (2N rows); returns 2N rows whose halves
        both hold ``eps(null) + s (eps(c) - eps(null))`` on the guided channels, with the other
        channels (the learned variance) from each half's own pass. ``cfg_channels`` (default: all
        latent channels) sets how many channels are guided; the official code guides 3 of the 4
        latent channels, which is what its published FID 2.27 used: set ``cfg_channels=3`` for that.
        """
        half = x[: len(x) // 2]
        combined = torch.cat([half, half], dim=0)
        model_out = self.forward(combined, t, y)
        k = self.in_channels if self.cfg_channels is None else self.cfg_channels
        eps, rest = model_out[:, :k], model_out[:, k:]
        cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
        half_eps = uncond_eps + cfg_scale * (cond_eps - uncond_eps)
        eps = torch.cat([half_eps, half_eps], dim=0)
        return torch.cat([eps, rest], dim=1)

    # ------------------------------------------------------------------ compute
    def flops(self) -> dict[str, int]:
        """Forward flops per image in the paper's convention; see ``dit_flops``."""
        return dit_flops(
            input_size=self.input_size,
            patch_size=self.patch_size,
            in_channels=self.in_channels,
            hidden_size=self.hidden_size,
            depth=self.depth,
            mlp_ratio=self.mlp_ratio,
            learn_sigma=self.learn_sigma,
            block=self.block,
        )

    def gflops(self) -> float:
        """Forward Gflops per image (multiply-adds / 1e9), the x-axis of Figs. 2.2 and 2.8."""
        return self.flops()["total"] / 1e9


def dit_flops(
    input_size: int = 32,
    patch_size: int = 2,
    in_channels: int = 4,
    hidden_size: int = 1152,
    depth: int = 28,
    mlp_ratio: float = 4.0,
    learn_sigma: bool = True,
    block: str = "adaln_zero",
) -> dict[str, int]:
    """Forward flops per image in the DiT paper's convention (Table 2.1, Sec. 2.3.2).

    One multiply-add is one flop. ``matmul``: every matrix product (patchify, every linear layer
    including the adaLN regressions and the timestep MLP, attention's ``QK^T`` and ``AV``); this
    equals ``common.flops.count_macs`` of a real forward pass. ``elementwise``: one flop per token
    channel for each elementwise transform that feeds a matrix product (per self-attention block:
    the two (adaptive) layer-norm modulations and the attention query scaling; the cross-attention
    block adds its norm and query scaling), the final modulation and the position-embedding
    addition. Matrix products alone give 29.04 for DiT-XL/4, below the paper's 29.05; with the
    elementwise terms the count reproduces Table 2.1 (S/B/L/XL at p=4: 1.4/5.6/19.7/29.1),
    XL/2 118.6, XL/2 at 512px 524.6, in-context 119.4 and cross-attention 137.6 (Sec. 2.5).
    """
    d, p = hidden_size, patch_size
    c_out = in_channels * 2 if learn_sigma else in_channels
    tokens = (input_size // p) ** 2
    seq = tokens + 2 if block == "in_context" else tokens
    mlp_hidden = int(d * mlp_ratio)
    embed = tokens * in_channels * p * p * d + 256 * d + d * d  # patchify + timestep MLP
    per_block = seq * (3 * d * d + d * d + 2 * d * mlp_hidden) + 2 * seq * seq * d
    per_block_elementwise = 3 * seq * d
    final = tokens * d * p * p * c_out
    if block == "adaln_zero":
        per_block += 6 * d * d
        final += 2 * d * d
    elif block == "adaln":
        per_block += 4 * d * d
        final += 2 * d * d
    elif block == "cross_attention":
        # q and output projections over the tokens, k/v over 2 condition tokens, attention.
        per_block += 2 * seq * d * d + 2 * 2 * d * d + 2 * seq * 2 * d
        per_block_elementwise += 2 * seq * d
    matmul = embed + depth * per_block + final
    elementwise = depth * per_block_elementwise + 2 * tokens * d
    return {"matmul": matmul, "elementwise": elementwise, "total": matmul + elementwise}


#################################################################################
#                                   DiT Configs                                 #
#################################################################################

#: Table 2.1: name -> (layers N, hidden size d, heads).
DIT_CONFIGS = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
PATCH_SIZES = (2, 4, 8)


def _make_constructor(size: str, patch: int):
    depth, hidden, heads = DIT_CONFIGS[size]

    def constructor(**kwargs) -> DiT:
        return DiT(depth=depth, hidden_size=hidden, patch_size=patch, num_heads=heads, **kwargs)

    constructor.__name__ = f"DiT_{size}_{patch}"
    constructor.__doc__ = f"DiT-{size}/{patch}: {depth} layers, hidden {hidden}, {heads} heads."
    return constructor


DiT_models = {
    f"DiT-{size}/{patch}": _make_constructor(size, patch)
    for size in ("XL", "L", "B", "S")
    for patch in PATCH_SIZES
}
for _name, _fn in DiT_models.items():
    globals()[_fn.__name__] = _fn


def create_model(name: str, **kwargs) -> DiT:
    """Build a registered DiT, with an error that lists the valid names."""
    if name not in DiT_models:
        raise KeyError(f"unknown DiT model {name!r}; valid names: {', '.join(DiT_models)}")
    return DiT_models[name](**kwargs)
