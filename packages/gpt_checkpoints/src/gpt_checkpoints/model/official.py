"""The released G.pt network (thesis Sec. 3.2.2, Fig. 3.2; official ``Gpt/models/transformer.py``).

Written here from what the official code computes; parameter names equal its state dicts, so the
released ``mnist_loss.pt``, ``mnist_error.pt``, ``cifar10_loss.pt``, ``cifar10_error.pt`` and
``cartpole.pt`` (``{'G', 'G_ema', 'optim'}``) load with ``strict=True``:

- tokens (official ``GPT.build_splits``): the noised future parameters theta*_j, then the
  starting parameters theta, cut into tokens by ``split_policy`` (``chunk_within_layer``: every
  parameter tensor in chunks of at most ``chunk_size`` values; ``layer_by_layer``: one token per
  tensor), then the scalar tokens: diffusion step j, l* - l and, with
  ``absolute_loss_conditioning``, l* and l. The MNIST MLP at chunk 1000 gives 11 + 11 + 4 = 26;
- scalars: parameter-free Fourier features ``[sin(f x), cos(f x), x]`` of the raw value with
  ``f = 2 ** linspace(0, max_freq_log2, num_frequencies)`` (``FrequencyEmbedder``);
- every token has its own bias-free linear encoder (``decoder.input_parameter_projections``),
  then ``ln_in``, learned positional embeddings (zero init), minGPT blocks without masking (exact
  GELU, separate key/query/value), ``ln_f``, and bias-free linear decoders for the theta*_j
  tokens only (zero init) plus the global residual theta, so a fresh model returns theta;
- the network predicts the signal theta* (``predict_xstart``) of a 1000-step linear-beta
  diffusion with fixed large variances, on parameters scaled by one global coefficient
  (``openai_coeff``) and raw metrics (losses, errors in percent, returns).

``PRESETS`` holds the five released configurations (``configs/test/*.yaml``); ``infer_config``
reads a configuration off a state dict's shapes (the released files store none), all but the
number of heads, which only the preset knows.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

SPLIT_POLICIES = ("chunk_within_layer", "layer_by_layer", "chunk")

#: The released models (official ``configs/test/<name>.yaml``, ``Gpt/tasks.py``): network,
#: normaliser, metric and prompting protocol.
PRESETS: dict[str, dict[str, Any]] = {
    "mnist_loss": {
        "task": "mlp_mnist", "metric": "test_loss", "openai_coeff": 4.185,
        "hidden_size": 1536, "depth": 12, "num_heads": 16, "chunk_size": 1000,
        "split_policy": "chunk_within_layer", "best_prompt": 0.0, "recursive_prompt": 0.0,
        "prompt_start_coeff": 0.9, "minimize": True, "num_test_runs": 500,
    },
    "mnist_error": {
        "task": "mlp_mnist", "metric": "test_error", "openai_coeff": 4.185,
        "hidden_size": 1536, "depth": 12, "num_heads": 16, "chunk_size": 1000,
        "split_policy": "chunk_within_layer", "best_prompt": 5.0, "recursive_prompt": 5.0,
        "prompt_start_coeff": 0.9, "minimize": True, "num_test_runs": 500,
    },
    "cifar10_loss": {
        "task": "cnn_cifar10", "metric": "test_loss", "openai_coeff": 1.646,
        "hidden_size": 2048, "depth": 12, "num_heads": 16, "chunk_size": 576,
        "split_policy": "chunk_within_layer", "best_prompt": 1.2, "recursive_prompt": 1.4,
        "prompt_start_coeff": 1.0, "minimize": True, "num_test_runs": 2050,
    },
    "cifar10_error": {
        "task": "cnn_cifar10", "metric": "test_error", "openai_coeff": 1.646,
        "hidden_size": 2048, "depth": 12, "num_heads": 16, "chunk_size": 576,
        "split_policy": "chunk_within_layer", "best_prompt": 35.0, "recursive_prompt": 45.0,
        "prompt_start_coeff": 1.0, "minimize": True, "num_test_runs": 2050,
    },
    "cartpole": {
        "task": "cartpole", "metric": "return", "openai_coeff": 2.06,
        "hidden_size": 1536, "depth": 12, "num_heads": 12, "chunk_size": 2048,
        "split_policy": "layer_by_layer", "best_prompt": 500.0, "recursive_prompt": 500.0,
        "prompt_start_coeff": 1.0, "minimize": False, "num_test_runs": 2050,
    },
}  # fmt: skip
#: What every released model shares (``configs/test/*.yaml``: ``transformer``).
SHARED = {
    "num_frequencies": 128,
    "max_freq_log2": 14,
    "absolute_loss_conditioning": True,
    "encoder_depth": 1,
    "decoder_depth": 1,
}
ARCHITECTURE_KEYS = (
    "hidden_size", "depth", "num_heads", "chunk_size", "split_policy", "num_frequencies",
    "max_freq_log2", "absolute_loss_conditioning", "encoder_depth", "decoder_depth",
)  # fmt: skip


def preset_architecture(name: str) -> dict[str, Any]:
    """The network arguments of a released model, e.g. ``preset_architecture("mnist_loss")``."""
    if name not in PRESETS:
        raise ValueError(f"unknown G.pt preset {name!r}; the released ones: {', '.join(PRESETS)}")
    full = {**SHARED, **PRESETS[name]}
    return {k: full[k] for k in ARCHITECTURE_KEYS}


def build_splits(sizes: Sequence[int], split_policy: str, chunk_size: int | None) -> list[int]:
    """Token sizes of a flat vector made of tensors of ``sizes`` (official ``GPT.build_splits``
    on an already flattened list)."""
    if split_policy not in SPLIT_POLICIES:
        raise ValueError(f"split_policy={split_policy!r}; choose one of {SPLIT_POLICIES}")
    if split_policy == "layer_by_layer":
        return [int(s) for s in sizes]
    if not chunk_size or chunk_size < 1:
        raise ValueError(f"split_policy={split_policy} needs a chunk_size >= 1")
    if split_policy == "chunk":
        total = sum(sizes)
        return [chunk_size] * (total // chunk_size) + (
            [total % chunk_size] if total % chunk_size else []
        )
    splits = []
    for size in sizes:
        splits += [chunk_size] * (size // chunk_size) + (
            [size % chunk_size] if size % chunk_size else []
        )
    return splits


def split_for(layer_sizes: Sequence[int], output_splits: Sequence[int]) -> dict[str, Any]:
    """``split_policy`` and ``chunk_size`` that cut tensors of ``layer_sizes`` into
    ``output_splits`` (a released file's decoders), or a ``ValueError`` when none does."""
    output_splits = [int(s) for s in output_splits]
    candidates = [("chunk_within_layer", max(output_splits)), ("layer_by_layer", None)]
    candidates.append(("chunk", max(output_splits)))
    for policy, chunk in candidates:
        if build_splits(layer_sizes, policy, chunk) == output_splits:
            return {"split_policy": policy, "chunk_size": chunk}
    raise ValueError(
        f"the G.pt file's decoders ({len(output_splits)} tokens of {output_splits[:6]}...) do not "
        f"fit a network with parameter tensors of sizes {list(layer_sizes)}; pass the task the "
        "file was trained on (task=..., or a preset such as preset=mnist_loss)"
    )


class FrequencyEmbedder(nn.Module):
    """Scalars -> ``[sin(f x), cos(f x), x]``, ``f = 2 ** linspace(0, max_freq_log2, F)``."""

    def __init__(self, num_frequencies: int, max_freq_log2: float) -> None:
        super().__init__()
        self.register_buffer(
            "frequencies", 2 ** torch.linspace(0, max_freq_log2, steps=num_frequencies)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1, 1).float()  # [N, D, 1]
        scaled = self.frequencies.view(1, 1, -1) * x
        return torch.cat([scaled.sin(), scaled.cos(), x], dim=-1).flatten(1)


class SelfAttention(nn.Module):
    """Unmasked multi-head self-attention with separate key, query and value projections."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by {num_heads} heads")
        self.key, self.query, self.value = (
            nn.Linear(dim, dim),
            nn.Linear(dim, dim),
            nn.Linear(dim, dim),
        )
        self.proj = nn.Linear(dim, dim)
        self.n_head = num_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape

        def heads(linear):
            return linear(x).view(b, t, self.n_head, c // self.n_head).transpose(1, 2)

        y = F.scaled_dot_product_attention(heads(self.query), heads(self.key), heads(self.value))
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    """Pre-LN transformer block: ``x + attn(ln1(x))``, ``x + mlp(ln2(x))`` (exact GELU)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, num_heads)
        self.mlp = nn.Sequential(
            nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), nn.Dropout(0.0)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


def _projections(sizes: Sequence[int], dim: int, depth: int, encode: bool) -> nn.ModuleList:
    """One bias-free MLP per token: ``Linear(size, dim)`` (+ GELU, Linear(dim, dim))... to encode,
    (Linear(dim, dim), GELU)... + ``Linear(dim, size)`` to decode."""
    out = nn.ModuleList()
    for size in sizes:
        layers: list[nn.Module] = []
        if encode:
            layers.append(nn.Linear(size, dim, bias=False))
            for _ in range(depth - 1):
                layers += [nn.GELU(), nn.Linear(dim, dim, bias=False)]
        else:
            for _ in range(depth - 1):
                layers += [nn.Linear(dim, dim, bias=False), nn.GELU()]
            layers.append(nn.Linear(dim, size, bias=False))
        out.append(nn.Sequential(*layers))
    return out


class TokenTransformer(nn.Module):
    """The official ``GPT`` (minGPT without masking): per-token encoders, ``ln_in``, positional
    embeddings, blocks, ``ln_f``, per-token decoders of the first ``len(output_splits)`` tokens."""

    def __init__(
        self,
        input_splits: Sequence[int],
        output_splits: Sequence[int],
        hidden_size: int,
        depth: int,
        num_heads: int,
        encoder_depth: int = 1,
        decoder_depth: int = 1,
    ) -> None:
        super().__init__()
        self.input_splits, self.output_splits = list(input_splits), list(output_splits)
        self.pos_emb = nn.Parameter(torch.zeros(1, len(self.input_splits), hidden_size))
        self.blocks = nn.Sequential(*[Block(hidden_size, num_heads) for _ in range(depth)])
        self.input_parameter_projections = _projections(
            self.input_splits, hidden_size, encoder_depth, encode=True
        )
        self.ln_in = nn.LayerNorm(hidden_size)
        self.ln_f = nn.LayerNorm(hidden_size)
        self.output_parameter_projections = _projections(
            self.output_splits, hidden_size, decoder_depth, encode=False
        )

    def forward(self, flat: torch.Tensor) -> torch.Tensor:
        chunks = torch.split(flat, self.input_splits, dim=1)
        h = torch.stack(
            [proj(c) for c, proj in zip(chunks, self.input_parameter_projections, strict=True)], 1
        )
        h = self.blocks(self.ln_in(h) + self.pos_emb)
        h = self.ln_f(h)
        return torch.cat(
            [proj(h[:, k]) for k, proj in enumerate(self.output_parameter_projections)], 1
        )


class OfficialGpt(nn.Module):
    """G.pt as released: ``G(theta*_j, j, theta, l, l*) -> theta*``; keys ``decoder.*`` and
    ``scalar_embedder.frequencies`` as in the official state dicts.

    ``forward(x, t, theta, loss, loss_target)`` takes the arguments of this package's models
    (``x`` the noised theta*_j, raw steps ``t``, raw metrics); the official ``Gpt.forward(x, t,
    loss_target, loss_prev, x_prev)`` computes the same.
    """

    #: Metrics enter raw (losses, errors in percent, returns), as in the released training.
    metric_encoding = "raw"

    @classmethod
    def from_preset(
        cls,
        param_shapes: Sequence,
        permutation_groups: Sequence = (),
        *,
        preset: str,
        **overrides: Any,
    ) -> OfficialGpt:
        """The released network of ``preset`` (``PRESETS``) for a task network with tensors of
        ``param_shapes``, with ``overrides`` of its arguments (``+model.hidden_size=256``); the
        ``_target_`` of ``conf/model/<preset>.yaml``. ``permutation_groups`` is accepted (every
        G.pt network is built from the same run-time arguments) and unused: the released network
        learns the symmetries from augmentation."""
        sizes = [math.prod(shape) for _, shape in param_shapes]
        return cls(sizes, **{**preset_architecture(preset), **overrides})

    def __init__(
        self,
        layer_sizes: Sequence[int],
        hidden_size: int = 1536,
        depth: int = 12,
        num_heads: int = 16,
        chunk_size: int | None = 1000,
        split_policy: str = "chunk_within_layer",
        num_frequencies: int = 128,
        max_freq_log2: float = 14,
        absolute_loss_conditioning: bool = True,
        encoder_depth: int = 1,
        decoder_depth: int = 1,
    ) -> None:
        super().__init__()
        self.layer_sizes = [int(s) for s in layer_sizes]
        self.absolute_loss_conditioning = absolute_loss_conditioning
        scalar = 2 * num_frequencies + 1
        num_scalars = 4 if absolute_loss_conditioning else 2
        input_sizes = self.layer_sizes * 2 + [scalar] * num_scalars
        self.decoder = TokenTransformer(
            build_splits(input_sizes, split_policy, chunk_size),
            build_splits(self.layer_sizes, split_policy, chunk_size),
            hidden_size,
            depth,
            num_heads,
            encoder_depth,
            decoder_depth,
        )
        self.scalar_embedder = FrequencyEmbedder(num_frequencies, max_freq_log2)
        self.config = {
            "hidden_size": hidden_size, "depth": depth, "num_heads": num_heads,
            "chunk_size": chunk_size, "split_policy": split_policy,
            "num_frequencies": num_frequencies, "max_freq_log2": max_freq_log2,
            "absolute_loss_conditioning": absolute_loss_conditioning,
            "encoder_depth": encoder_depth, "decoder_depth": decoder_depth,
        }  # fmt: skip
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Official init: linear weights N(0, 0.02), zero biases, unit LayerNorms, zero positional
        embeddings, and zero last decoder layers (the model starts as the identity on theta)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for proj in self.decoder.output_parameter_projections:
            nn.init.zeros_(proj[-1].weight)

    @property
    def num_tokens(self) -> int:
        return len(self.decoder.input_splits)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        theta: torch.Tensor,
        loss: torch.Tensor,
        loss_target: torch.Tensor,
    ) -> torch.Tensor:
        embed = self.scalar_embedder
        scalars = [embed(t), embed(loss_target - loss)]
        if self.absolute_loss_conditioning:
            scalars += [embed(loss_target), embed(loss)]
        flat = torch.cat([x, theta, *(s.to(x.dtype) for s in scalars)], dim=1)
        return self.decoder(flat) + theta


def infer_config(state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Network arguments read off an official state dict: all but ``num_heads`` (no tensor
    records it) and the tokenisation, for which it returns the decoders' ``output_splits``
    (``split_for(task sizes, output_splits)`` recovers policy and chunk size)."""
    if "decoder.pos_emb" not in state_dict or "scalar_embedder.frequencies" not in state_dict:
        raise ValueError(
            "not an official G.pt state dict (no decoder.pos_emb / scalar_embedder.frequencies)"
        )
    hidden = state_dict["decoder.pos_emb"].shape[-1]
    depth = 1 + max(
        int(m.group(1)) for k in state_dict if (m := re.match(r"decoder\.blocks\.(\d+)\.", k))
    )
    frequencies = state_dict["scalar_embedder.frequencies"]
    num_frequencies = frequencies.numel()
    max_freq_log2 = round(math.log2(float(frequencies[-1])), 6)

    def depth_of(prefix: str) -> int:
        return sum(1 for k in state_dict if re.fullmatch(rf"{prefix}\.0\.\d+\.weight", k))

    def sizes(prefix: str, axis: int) -> list[int]:
        out, k = [], 0
        while f"{prefix}.{k}.0.weight" in state_dict:
            last = max(int(m.group(1)) for key in state_dict
                       if (m := re.fullmatch(rf"{prefix}\.{k}\.(\d+)\.weight", key)))  # fmt: skip
            weight = state_dict[f"{prefix}.{k}.{0 if axis == 1 else last}.weight"]
            out.append(weight.shape[axis])
            k += 1
        return out

    inputs = sizes("decoder.input_parameter_projections", 1)
    outputs = sizes("decoder.output_parameter_projections", 0)
    scalar = 2 * num_frequencies + 1
    num_scalars = (sum(inputs) - 2 * sum(outputs)) // scalar  # step, l* - l (, l*, l)
    return {
        "hidden_size": hidden,
        "depth": depth,
        "num_frequencies": num_frequencies,
        "max_freq_log2": max_freq_log2,
        "absolute_loss_conditioning": num_scalars == 4,
        "encoder_depth": depth_of("decoder.input_parameter_projections"),
        "decoder_depth": depth_of("decoder.output_parameter_projections"),
        "output_splits": outputs,
    }
