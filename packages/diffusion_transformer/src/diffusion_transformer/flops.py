"""The analytic forward flop count of a DiT in the paper's convention (Table 2.1, Sec. 2.3.2).

Pure arithmetic on the configuration, so the Gflops of every model of the scaling study are known
without building it; ``DiT.gflops()`` and ``models.gflops_table`` (``python -m
diffusion_transformer.gflops``) use it.
"""

from __future__ import annotations

from collections.abc import Sequence


def dit_flops(
    input_size: int = 32,
    patch_size: int = 2,
    in_channels: int = 4,
    hidden_size: int = 1152,
    depth: int = 28,
    mlp_ratio: float = 4.0,
    learn_sigma: bool = True,
    block: str = "adaln_zero",
    qk_norm: bool = False,
    use_rmsnorm: bool = False,
    use_swiglu: bool = False,
    use_rope: bool = False,
    wo_shift: bool = False,
    projector_dims: Sequence[int] = (),
    projector_hidden: int = 2048,
) -> dict[str, int]:
    """Forward flops per image in the DiT paper's convention (Table 2.1, Sec. 2.3.2).

    One multiply-add is one flop. ``matmul``: every matrix product (patchify, every linear layer
    including the adaLN regressions and the timestep MLP, attention's ``QK^T`` and ``AV``); this
    equals ``common.nn.flops.count_macs`` of a real forward pass. ``elementwise``: one flop per
    token
    channel for each elementwise transform that feeds a matrix product (per self-attention block:
    the two (adaptive) layer-norm modulations and the attention query scaling; the cross-attention
    block adds its norm and query scaling), the final modulation and the position-embedding
    addition. Matrix products alone give 29.04 for DiT-XL/4, below the paper's 29.05; with the
    elementwise terms the count reproduces Table 2.1 (S/B/L/XL at p=4: 1.4/5.6/19.7/29.1),
    XL/2 118.6, XL/2 at 512px 524.6, in-context 119.4 and cross-attention 137.6 (Sec. 2.5).

    The successors' options, in the same convention: ``wo_shift`` regresses 4d modulation values
    instead of 6d (its scale-only modulation still counts one flop per token channel); SwiGLU's
    ``w12`` and ``w3`` replace ``fc1``/``fc2`` (hidden ``int(2/3 int(d r))``) and its gate
    product counts one flop per hidden unit; each RMSNorm weight (two per block, the final norm)
    and each qk-norm (LayerNorm affine or RMSNorm weight, on q and k) one per channel; RoPE two per
    channel of q and k (``z cos + rot(z) sin``). Norm statistics and activations are not counted,
    as for DiT's LayerNorm and GELU. ``projectors``: REPA's projector multiply-adds, reported
    apart and not in ``total``, since they run only in training (``return_projections``).
    """
    d, p = hidden_size, patch_size
    c_out = in_channels * 2 if learn_sigma else in_channels
    tokens = (input_size // p) ** 2
    seq = tokens + 2 if block == "in_context" else tokens
    mlp_hidden = int(d * mlp_ratio)
    embed = tokens * in_channels * p * p * d + 256 * d + d * d  # patchify + timestep MLP
    per_block = seq * (3 * d * d + d * d) + 2 * seq * seq * d
    per_block_elementwise = 3 * seq * d
    if use_swiglu:
        hidden = int(2 / 3 * mlp_hidden)
        per_block += seq * 3 * d * hidden
        per_block_elementwise += seq * hidden
    else:
        per_block += seq * 2 * d * mlp_hidden
    per_block_elementwise += seq * d * (2 * use_rmsnorm + 2 * qk_norm + 4 * use_rope)
    final = tokens * d * p * p * c_out
    ph = projector_hidden
    projectors = sum(tokens * (d * ph + ph * ph + ph * z) for z in projector_dims)
    if block == "adaln_zero":
        per_block += (4 if wo_shift else 6) * d * d
        final += 2 * d * d
    elif block == "adaln":
        per_block += 4 * d * d
        final += 2 * d * d
    elif block == "cross_attention":
        # q and output projections over the tokens, k/v over 2 condition tokens, attention.
        per_block += 2 * seq * d * d + 2 * 2 * d * d + 2 * seq * 2 * d
        per_block_elementwise += 2 * seq * d
    matmul = embed + depth * per_block + final
    elementwise = depth * per_block_elementwise + (2 + use_rmsnorm) * tokens * d
    total = matmul + elementwise
    return {"matmul": matmul, "elementwise": elementwise, "total": total, "projectors": projectors}
