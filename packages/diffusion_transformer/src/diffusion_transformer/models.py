"""Diffusion Transformers (DiT), thesis chapter 2.

One file, as in the official code: patchify, four conditioning block designs (Sec. 2.3.2, Fig. 2.3),
the linear decoder, and the registry of the twelve Table 2.1 models (``DiT_XL_2`` ... ``DiT_S_8``)
over ``DIT_CONFIGS``, the one table of model sizes (``dit``, the ``_target_`` of the Hydra model
configs, reads it too).
Parameter names equal the released checkpoints', so ``DiT-XL-2-256x256.pt`` loads with
``strict=True`` into ``DiT_models["DiT-XL/2"]()``. Gflops: ``diffusion_transformer.flops``.
The successors' options (SiT, REPA, LightningDiT; layers in ``diffusion_transformer.layers``) keep
their official key names too; ``ARCHS`` names every family's sizes (``SiT-XL/2``,
``LightningDiT-XL/1``), built by ``from_arch``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from common.nn.layers import (
    LabelEmbedder,
    Mlp,
    TimestepEmbedder,
    get_2d_sincos_pos_embed,
)
from diffusion_transformer.flops import dit_flops
from diffusion_transformer.layers import (
    CrossAttentionBlock,
    FinalLayer,
    InContextBlock,
    NormRopeAttention,
    PatchEmbed,
    RotaryEmbedding2D,
    SwiGLU,
    modulate_optional_shift,
    norm_layer,
    projector,
    swiglu_hidden,
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
    The successors' options (LightningDiT ``LightningDiTBlock``, REPA ``SiTBlock``): RMSNorm for
    the two norms, qk-norm, SwiGLU, and ``wo_shift`` (scale and gate only: 4d outputs).
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        zero_gates: bool = True,
        qk_norm: bool = False,
        use_rmsnorm: bool = False,
        use_swiglu: bool = False,
        wo_shift: bool = False,
    ) -> None:
        super().__init__()
        self.zero_gates, self.wo_shift = zero_gates, wo_shift
        self.norm1 = norm_layer(hidden_size, use_rmsnorm)
        self.attn = NormRopeAttention(hidden_size, num_heads, qk_norm, use_rmsnorm)
        self.norm2 = norm_layer(hidden_size, use_rmsnorm)
        if use_swiglu:
            self.mlp = SwiGLU(hidden_size, swiglu_hidden(hidden_size, mlp_ratio))
        else:
            self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.chunks = (6 if zero_gates else 4) - (2 if wo_shift else 0)
        self.adaLN_modulation = nn.Sequential(
            nn.SiLU(), nn.Linear(hidden_size, self.chunks * hidden_size)
        )

    def forward(
        self, x: torch.Tensor, c: torch.Tensor, rope: RotaryEmbedding2D | None = None
    ) -> torch.Tensor:
        mod = self.adaLN_modulation(c).chunk(self.chunks, dim=1)
        if self.wo_shift:
            (scale_msa, gate_msa, scale_mlp, gate_mlp), shift_msa, shift_mlp = mod, None, None
        elif self.zero_gates:
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod
        else:
            (shift_msa, scale_msa, shift_mlp, scale_mlp), gate_msa, gate_mlp = mod, None, None
        h = self.attn(modulate_optional_shift(self.norm1(x), shift_msa, scale_msa), rope)
        x = x + (h if gate_msa is None else gate_msa.unsqueeze(1) * h)
        h = self.mlp(modulate_optional_shift(self.norm2(x), shift_mlp, scale_mlp))
        return x + (h if gate_mlp is None else gate_mlp.unsqueeze(1) * h)


#################################################################################
#                                 Core DiT Model                                #
#################################################################################


class DiT(nn.Module):
    """Diffusion model with a transformer backbone, and the options of its successors.

    ``forward(x, t, y)`` maps a noised latent ``[N, C, I, I]``, integer (or real) timesteps ``[N]``
    and labels ``[N]`` to ``[N, 2C, I, I]`` (noise and variance values, ``learn_sigma=True``) or
    ``[N, C, I, I]``. The model embeds ``t`` as given: scaling it (DiT's 0..999, SiT's [0, 1]) is
    the diffusion's or transport's business.

    Successors' options (adaLN-Zero blocks only), named as in their code: ``return_sigma=False``
    returns only the first ``C`` channels of a ``learn_sigma`` head (SiT ``forward``);
    ``qk_norm``, ``use_rmsnorm``, ``use_swiglu``, ``use_rope`` (2-D RoPE), ``wo_shift``
    (LightningDiT); ``projector_dims`` (one REPA projector per target dimension, applied to the
    tokens after block ``encoder_depth``, hidden width ``projector_hidden``). The projections are
    training-only: ``forward(..., return_projections=True)`` returns ``(out, [z_1, ...])`` with
    ``z_i`` of shape ``[N, T, projector_dims[i]]`` (REPA's ``zs_tilde``).
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
        return_sigma: bool = True,
        qk_norm: bool = False,
        use_rmsnorm: bool = False,
        use_swiglu: bool = False,
        use_rope: bool = False,
        wo_shift: bool = False,
        projector_dims: Sequence[int] = (),
        encoder_depth: int = 8,
        projector_hidden: int = 2048,
    ) -> None:
        projector_dims = [int(z) for z in projector_dims]
        config = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        super().__init__()
        self.config = config  # the constructor arguments: what checkpoints store to rebuild it
        if block not in BLOCK_TYPES:
            raise ValueError(f"unknown block {block!r}: choose one of {', '.join(BLOCK_TYPES)}")
        options = {"qk_norm": qk_norm, "use_rmsnorm": use_rmsnorm, "use_swiglu": use_swiglu,
                   "use_rope": use_rope, "wo_shift": wo_shift}  # fmt: skip
        if block != "adaln_zero" and (any(options.values()) or projector_dims):
            raise ValueError(
                f"block={block} has none of the SiT/REPA/LightningDiT options: use "
                "block=adaln_zero, or drop the options"
            )
        if projector_dims and not 1 <= encoder_depth <= depth:
            raise ValueError(
                f"encoder_depth={encoder_depth} is not a block of this {depth}-block model: set "
                f"encoder_depth between 1 and {depth} (REPA uses 8 for XL, 4 for B)"
            )
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
        self.return_sigma = return_sigma
        self.options = options
        self.projector_dims = projector_dims
        self.encoder_depth = encoder_depth
        self.projector_hidden = projector_hidden

        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        num_patches = self.x_embedder.num_patches
        # Fixed sin-cos embedding, stored as a frozen parameter as in the released checkpoints.
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, hidden_size), requires_grad=False)

        adaptive = block in ("adaln_zero", "adaln")
        grid = self.x_embedder.grid_size
        self.feat_rope = RotaryEmbedding2D(hidden_size // num_heads, grid) if use_rope else None
        if adaptive:
            blocks = [
                DiTBlock(hidden_size, num_heads, mlp_ratio, block == "adaln_zero", qk_norm,
                         use_rmsnorm, use_swiglu, wo_shift)
                for _ in range(depth)
            ]  # fmt: skip
        elif block == "in_context":
            blocks = [InContextBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)]
        else:
            blocks = [CrossAttentionBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)]
        self.blocks = nn.ModuleList(blocks)
        self.projectors = nn.ModuleList(
            [projector(hidden_size, projector_hidden, z) for z in projector_dims]
        )
        self.final_layer = FinalLayer(
            hidden_size, patch_size, self.out_channels, adaptive, use_rmsnorm
        )
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

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor,
        return_projections: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """The output; with ``return_projections``, ``(output, projector outputs)`` (REPA)."""
        if return_projections and not self.projectors:
            raise ValueError(
                "return_projections=True needs REPA projectors: build the model with "
                "projector_dims (the encoders' feature dimensions, e.g. [768])"
            )
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
            for i, block in enumerate(self.blocks):
                x = block(x, c, self.feat_rope)
                if return_projections and i + 1 == self.encoder_depth:
                    projections = [p(x) for p in self.projectors]
            x = self.final_layer(x, c)
        out = self.unpatchify(x)
        if self.learn_sigma and not self.return_sigma:
            out = out[:, : self.in_channels]
        return (out, projections) if return_projections else out

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
            projector_dims=self.projector_dims,
            projector_hidden=self.projector_hidden,
            **self.options,
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

#: Each family's sizes, patch sizes and conventions (constructor arguments): DiT; SiT (the
#: transport sees the first half of a ``learn_sigma`` head; REPA's SiT adds projectors, read off
#: its files); LightningDiT as its configs build it (``configs/*.yaml``: VA-VAE f16d32 latents).
FAMILIES: dict[str, tuple[tuple[str, ...], tuple[int, ...], dict[str, Any]]] = {
    "DiT": (tuple(DIT_CONFIGS), PATCH_SIZES, {}),
    "SiT": (tuple(DIT_CONFIGS), PATCH_SIZES, {"return_sigma": False}),
    "LightningDiT": (
        ("B", "L", "XL"),
        (1, 2),
        {"input_size": 16, "in_channels": 32, "learn_sigma": False, "use_swiglu": True,
         "use_rope": True, "use_rmsnorm": True},
    ),
}  # fmt: skip
#: Every registered architecture by its official name (``DiT-XL/2``, ``SiT-XL/2``,
#: ``LightningDiT-XL/1``) -> DiT constructor arguments.
ARCHS: dict[str, dict[str, Any]] = {
    f"{family}-{size}/{patch}": {**DIT_CONFIGS[size]._asdict(), "patch_size": patch, **flags}
    for family, (sizes, patches, flags) in FAMILIES.items()
    for size in sizes
    for patch in patches
}


def from_arch(name: str, **kwargs: Any) -> DiT:
    """The registered architecture ``name`` (``ARCHS``); ``kwargs`` win over its arguments."""
    if name not in ARCHS:
        raise ValueError(f"unknown model {name!r}; pick one of {', '.join(ARCHS)}")
    return DiT(**{**ARCHS[name], **kwargs})


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
