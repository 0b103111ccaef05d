"""Diffusion Transformers (DiT), thesis chapter 2.

One file, as in the official code: patchify, four conditioning block designs (Sec. 2.3.2, Fig. 2.3),
the linear decoder, and the registry of the twelve Table 2.1 models (``DiT_XL_2`` ... ``DiT_S_8``)
over ``DIT_CONFIGS``, the one table of model sizes (``dit``, the ``_target_`` of the Hydra model
configs, reads it too).
Parameter names equal the released checkpoints', so ``DiT-XL-2-256x256.pt`` loads with
``strict=True`` into ``DiT_models["DiT-XL/2"]()``. Gflops: ``diffusion_transformer.flops``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from common.nn.layers import (
    Attention,
    CrossAttention,
    LabelEmbedder,
    Mlp,
    TimestepEmbedder,
    get_2d_sincos_pos_embed,
    modulate,
)
from diffusion_transformer.flops import dit_flops

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
        config = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        super().__init__()
        self.config = config  # the constructor arguments: what checkpoints store to rebuild it
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


#################################################################################
#                                   DiT Configs                                 #
#################################################################################


class DiTSize(NamedTuple):
    """One row of Table 2.1: layers N, hidden size d and attention heads of a DiT model size."""

    depth: int
    hidden_size: int
    num_heads: int


#: Table 2.1, the one table of model sizes: the registry below and ``dit`` (``conf/model``) read it.
DIT_CONFIGS: dict[str, DiTSize] = {
    "S": DiTSize(depth=12, hidden_size=384, num_heads=6),
    "B": DiTSize(depth=12, hidden_size=768, num_heads=12),
    "L": DiTSize(depth=24, hidden_size=1024, num_heads=16),
    "XL": DiTSize(depth=28, hidden_size=1152, num_heads=16),
}
PATCH_SIZES = (2, 4, 8)


def dit(
    size: str,
    depth: int | None = None,
    hidden_size: int | None = None,
    num_heads: int | None = None,
    **kwargs: Any,
) -> DiT:
    """A DiT of Table 2.1's ``size`` (``DIT_CONFIGS``); ``depth``, ``hidden_size`` and
    ``num_heads`` that are set win over its row (a size outside the table sets all three)."""
    given = {"depth": depth, "hidden_size": hidden_size, "num_heads": num_heads}
    given = {k: v for k, v in given.items() if v is not None}
    if size not in DIT_CONFIGS and len(given) < 3:
        raise ValueError(
            f"model size {size!r} is not in Table 2.1 ({', '.join(DIT_CONFIGS)}): pick one with "
            "model=s|b|l|xl, or set model.depth, model.hidden_size and model.num_heads for a "
            "size of your own"
        )
    row = DIT_CONFIGS[size]._asdict() if size in DIT_CONFIGS else {}
    return DiT(**{**row, **given}, **kwargs)


def DiT_XL_2(**kwargs: Any) -> DiT:
    return DiT(patch_size=2, **DIT_CONFIGS["XL"]._asdict(), **kwargs)


def DiT_XL_4(**kwargs: Any) -> DiT:
    return DiT(patch_size=4, **DIT_CONFIGS["XL"]._asdict(), **kwargs)


def DiT_XL_8(**kwargs: Any) -> DiT:
    return DiT(patch_size=8, **DIT_CONFIGS["XL"]._asdict(), **kwargs)


def DiT_L_2(**kwargs: Any) -> DiT:
    return DiT(patch_size=2, **DIT_CONFIGS["L"]._asdict(), **kwargs)


def DiT_L_4(**kwargs: Any) -> DiT:
    return DiT(patch_size=4, **DIT_CONFIGS["L"]._asdict(), **kwargs)


def DiT_L_8(**kwargs: Any) -> DiT:
    return DiT(patch_size=8, **DIT_CONFIGS["L"]._asdict(), **kwargs)


def DiT_B_2(**kwargs: Any) -> DiT:
    return DiT(patch_size=2, **DIT_CONFIGS["B"]._asdict(), **kwargs)


def DiT_B_4(**kwargs: Any) -> DiT:
    return DiT(patch_size=4, **DIT_CONFIGS["B"]._asdict(), **kwargs)


def DiT_B_8(**kwargs: Any) -> DiT:
    return DiT(patch_size=8, **DIT_CONFIGS["B"]._asdict(), **kwargs)


def DiT_S_2(**kwargs: Any) -> DiT:
    return DiT(patch_size=2, **DIT_CONFIGS["S"]._asdict(), **kwargs)


def DiT_S_4(**kwargs: Any) -> DiT:
    return DiT(patch_size=4, **DIT_CONFIGS["S"]._asdict(), **kwargs)


def DiT_S_8(**kwargs: Any) -> DiT:
    return DiT(patch_size=8, **DIT_CONFIGS["S"]._asdict(), **kwargs)


#: The twelve models of Table 2.1 by their paper names, as the official ``DiT_models``.
DiT_models = {
    "DiT-XL/2": DiT_XL_2, "DiT-XL/4": DiT_XL_4, "DiT-XL/8": DiT_XL_8,
    "DiT-L/2": DiT_L_2, "DiT-L/4": DiT_L_4, "DiT-L/8": DiT_L_8,
    "DiT-B/2": DiT_B_2, "DiT-B/4": DiT_B_4, "DiT-B/8": DiT_B_8,
    "DiT-S/2": DiT_S_2, "DiT-S/4": DiT_S_4, "DiT-S/8": DiT_S_8,
}  # fmt: skip


def gflops_table(image_size: int = 256, block: str = "adaln_zero") -> list[tuple[str, float]]:
    """``[(name, gflops)]`` of the twelve registered models on latents of ``image_size / 8``
    (Table 2.1, Fig. 2.2)."""
    if image_size % 8:
        raise ValueError(
            f"image size {image_size} is not a multiple of the VAE's factor 8; pass e.g. "
            "image_size=256 or image_size=512"
        )
    if block not in BLOCK_TYPES:
        raise ValueError(f"unknown block {block!r}; choose one of {', '.join(BLOCK_TYPES)}")
    rows = []
    for size, config in DIT_CONFIGS.items():
        for patch in PATCH_SIZES:
            flops = dit_flops(
                input_size=image_size // 8,
                patch_size=patch,
                hidden_size=config.hidden_size,
                depth=config.depth,
                block=block,
            )
            rows.append((f"DiT-{size}/{patch}", flops["total"] / 1e9))
    return rows
