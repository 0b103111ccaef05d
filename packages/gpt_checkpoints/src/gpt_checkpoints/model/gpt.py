"""The G.pt transformer (thesis Sec. 3.2.2, Fig. 3.2).

Inputs: a starting parameter vector theta, the noised future parameters theta*_j, the starting
metric l, the prompted metric l* and the diffusion step j. Each layer's parameters (each weight and
each bias separately) form a token, and layers larger than ``max_token_size`` (M) are chunked into
several tokens of at most M values (layer-by-layer tokenisation with chunking). Every token has its
own linear encoder; l, l* and j are frequency-embedded scalar tokens. A stack of non-causal GPT-2
blocks (``common.nn.layers.GPT2Block``) with learned positional embeddings initialised to zero mixes
them; per-token linear decoders, zero-initialised, map the theta*_j output tokens back to parameter
chunks; a global residual connection adds theta, so a fresh model returns its input theta and the
network learns the update theta* - theta. With x0 (signal) prediction the output is the denoised
theta* of Eq. 3.1.

Addition (``noisy_skip``, on by default): a learned gate g_j of the step embedding,
zero-initialised, adds g_j (theta*_j - theta) to the output, so a CPU-sized model can pass
theta*_j through at small j (why: docs/gpt_digits/README.md). A fresh model still returns theta
exactly.

Addition (``tokenization: neuron``, ``model=neuron``): one token per hidden unit instead of per
layer chunk (``NeuronTokenizer``), with encoders, decoders and positional embeddings shared by the
units of a layer, which makes G.pt exactly equivariant to the permutations of Sec. 3.2.1. The
thesis' layer tokenisation stays the default.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from common.nn.layers import FrequencyEmbedder, GPT2Block

# ------------------------------------------------------------------------------- tokenizer


class ParameterTokenizer:
    """Split flat parameter vectors ``[N, P]`` into per-layer tokens of at most ``M`` values.

    ``layer_sizes`` are the sizes of the parameter tensors in flattening order. A layer of size
    ``s > M`` becomes ``ceil(s / M)`` tokens: ``floor(s / M)`` of M values and one with the rest
    (Sec. 3.2.2: a 10 x 768 weight with M = 1000 gives seven tokens of 1000 and one of 680).
    Tokens are returned zero-padded to the longest token, ``[N, K, max_len]``.

    ``slots[k]`` names the encoder, decoder and positional embedding token ``k`` uses; here every
    token has its own (Sec. 3.2.2). ``NeuronTokenizer`` shares them between hidden units.
    """

    def __init__(self, layer_sizes: Sequence[int], max_token_size: int | None = None) -> None:
        _check_token_size(max_token_size)
        self.layer_sizes = [int(s) for s in layer_sizes]
        self.max_token_size = max_token_size
        tokens, start = [], 0
        for s in self.layer_sizes:
            tokens += list(torch.arange(start, start + s, device="cpu").split(max_token_size or s))
            start += s
        self._build(tokens, list(range(len(tokens))))

    def _build(self, tokens: list[torch.Tensor], slots: list[int]) -> None:
        """Index tables for tokens given as lists of flat positions, covering each once."""
        self.token_sizes = [len(t) for t in tokens]
        self.num_params = sum(self.token_sizes)
        self.max_len = max(self.token_sizes)
        # index[k, i]: position in the flat vector of value i of token k (num_params = padding)
        index = torch.full(
            (len(tokens), self.max_len), self.num_params, dtype=torch.long, device="cpu"
        )
        for k, positions in enumerate(tokens):
            index[k, : len(positions)] = positions
        self.index = index
        self.mask = index < self.num_params
        order = index[self.mask]
        if not torch.equal(order.sort().values, torch.arange(self.num_params, device="cpu")):
            raise ValueError("tokens must cover every parameter exactly once")
        # detokenize reorders only when tokens do not follow the flat order (neuron tokens)
        self.inverse = None if bool((order.diff() > 0).all()) else order.argsort()
        self.slots = torch.tensor(slots, dtype=torch.long, device="cpu")
        self.slot_sizes = [0] * (max(slots) + 1)
        for k, slot in enumerate(slots):
            self.slot_sizes[slot] = self.token_sizes[k]

    @property
    def num_tokens(self) -> int:
        return len(self.token_sizes)

    def tokenize(self, flat: torch.Tensor) -> torch.Tensor:
        if flat.shape[-1] != self.num_params:
            raise ValueError(
                f"parameter vectors of length {flat.shape[-1]} given to a tokenizer for "
                f"{self.num_params} parameters; the G.pt checkpoint and the task do not match"
            )
        padded = torch.cat([flat, flat.new_zeros(*flat.shape[:-1], 1)], dim=-1)
        return padded[..., self.index.to(flat.device)]

    def detokenize(self, tokens: torch.Tensor) -> torch.Tensor:
        values = tokens[..., self.mask.to(tokens.device)]
        if self.inverse is not None:
            values = values[..., self.inverse.to(tokens.device)]
        return values.reshape(*tokens.shape[:-2], self.num_params)


class NeuronTokenizer(ParameterTokenizer):
    """One token per hidden unit (addition to the thesis, ``tokenization: neuron``).

    Unit ``u`` of a permutation group (``tasks.base.PermutationGroup``: the units Sec. 3.2.1
    permutes) gathers every parameter attached to it: its row of incoming weights and its bias (axis
    0) and its column of outgoing weights in the next layer. All units of a group share one encoder,
    decoder and positional embedding (one slot), so permuting the units permutes the tokens and the
    transformer's output the same way: the model is equivariant to the symmetry the augmentation
    teaches the layer tokenisation. A parameter tensor in two groups (the middle conv of a CNN)
    belongs to the group that indexes it on axis 0; parameters in no group (the output bias) become
    layer tokens as in ``ParameterTokenizer``. Tokens wider than ``M`` are chunked, chunk ``c`` of
    every unit sharing a slot.
    """

    def __init__(
        self,
        entries: Sequence[tuple[str, Sequence[int]]],
        groups: Sequence,
        max_token_size: int | None = None,
    ) -> None:
        _check_token_size(max_token_size)
        shapes = {str(n): tuple(int(d) for d in shape) for n, shape in entries}
        positions, start = {}, 0
        for name, shape in shapes.items():
            size = math.prod(shape)
            positions[name] = torch.arange(start, start + size, device="cpu").view(shape)
            start += size
        owner: dict[str, tuple[int, int]] = {}
        for first_axis in (True, False):  # a unit's incoming weights claim a tensor first
            for g, (_, members) in enumerate(groups):
                for name, axis in members:
                    if name not in shapes:
                        raise ValueError(f"permutation group names {name!r}, not a parameter")
                    if name not in owner and (int(axis) == 0) == first_axis:
                        owner[name] = (g, int(axis))
        tokens: list[torch.Tensor] = []
        slots: list[int] = []
        next_slot = 0
        for g, (size, _) in enumerate(groups):
            owned = [(n, a) for n, (og, a) in owner.items() if og == g]
            if not owned:
                continue
            units = [
                torch.cat([positions[n].movedim(a, 0)[u].flatten() for n, a in owned])
                for u in range(int(size))
            ]
            chunks = [u.split(max_token_size or len(u)) for u in units]
            for c in range(len(chunks[0])):
                tokens += [unit[c] for unit in chunks]
                slots += [next_slot] * len(chunks)
                next_slot += 1
        for name in shapes:
            if name not in owner:
                flat = positions[name].flatten()
                for part in flat.split(max_token_size or flat.numel()):
                    tokens.append(part)
                    slots.append(next_slot)
                    next_slot += 1
        self._build(tokens, slots)


def _check_token_size(max_token_size: int | None) -> None:
    if max_token_size is not None and max_token_size <= 0:
        raise ValueError(f"max_token_size must be positive, got {max_token_size}")


class PerTokenLinear(nn.Module):
    """K independent linear maps, one per token (Sec. 3.2.2: encoders and decoders share no
    weights), evaluated together on zero-padded tokens ``[N, K, in_max] -> [N, K, out_max]``.

    ``in_sizes``/``out_sizes`` are the true sizes; weights outside them are masked to zero so the
    padded layout computes exactly ``K`` separate ``nn.Linear`` layers of those sizes. With
    ``slots`` (``[K]`` indices into the given sizes), tokens of one slot share one map.
    """

    def __init__(
        self,
        in_sizes: Sequence[int],
        out_sizes: Sequence[int],
        zero_init: bool = False,
        slots: torch.Tensor | None = None,
    ):
        super().__init__()
        k = len(in_sizes)
        in_max, out_max = max(in_sizes), max(out_sizes)
        mask = torch.zeros(k, in_max, out_max)
        for i, (a, b) in enumerate(zip(in_sizes, out_sizes, strict=True)):
            mask[i, :a, :b] = 1
        self.register_buffer("mask", mask, persistent=False)
        self.weight = nn.Parameter(torch.zeros(k, in_max, out_max))
        self.bias = nn.Parameter(torch.zeros(k, out_max))
        out_mask = torch.zeros(k, out_max)
        for i, b in enumerate(out_sizes):
            out_mask[i, :b] = 1
        self.register_buffer("out_mask", out_mask, persistent=False)
        self.register_buffer("slots", slots, persistent=False)
        if not zero_init:  # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) per token
            with torch.no_grad():
                for i, a in enumerate(in_sizes):
                    bound = 1.0 / math.sqrt(a)
                    self.weight[i].uniform_(-bound, bound)
                    self.bias[i].uniform_(-bound, bound)
                self.weight.mul_(mask)
                self.bias.mul_(out_mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight * self.mask, self.bias * self.out_mask
        if self.slots is not None:
            weight, bias = weight[self.slots], bias[self.slots]
        return torch.einsum("nki,kio->nko", x, weight) + bias


# ------------------------------------------------------------------------------- model


class Gpt(nn.Module):
    """G.pt: ``G(theta*_j, theta, l*, l, j) -> theta*`` (Eq. 3.1, Fig. 3.2).

    Token order: ``[l, l*, j, theta tokens..., theta*_j tokens...]``. Metrics are expected
    normalised to about [0, 1] (``metric_scale`` spreads them over the sinusoid frequencies).

    ``param_shapes`` (``(name, shape)`` of each tensor of the task network, in flattening order)
    and ``permutation_groups`` (its hidden-unit groups, Sec. 3.2.1) describe the task network: they
    come from the checkpoint dataset at run time (``model.module.GptModule`` passes them); the
    rest are the ``model`` config group's keys (``conf/model/*.yaml``).
    ``tokenization="neuron"`` uses ``NeuronTokenizer`` instead of the layer tokens, and one token
    per unit holds both that unit's theta and theta*_j (the sum of their two encoders):
    ``[l, l*, j, unit/layer tokens...]``; the layer tokenisation ignores ``permutation_groups``.
    """

    #: Metrics enter normalised to [0, 1] over the training range (``MetricNormalizer``).
    metric_encoding = "range"

    def __init__(
        self,
        param_shapes: Sequence,
        permutation_groups: Sequence = (),
        *,
        hidden_size: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        max_token_size: int | None = None,
        frequency_embedding_size: int = 256,
        metric_scale: float = 1000.0,
        noisy_skip: bool = True,
        tokenization: str = "layer",
    ) -> None:
        super().__init__()
        if tokenization == "layer":
            sizes = [math.prod(shape) for _, shape in param_shapes]
            self.tokenizer = ParameterTokenizer(sizes, max_token_size)
            slots = None
        elif tokenization == "neuron":
            if not permutation_groups:
                raise ValueError(
                    "tokenization=neuron needs the task's permutation groups; for a task without "
                    "hidden-unit symmetries use tokenization=layer (model=small or model=paper)"
                )
            self.tokenizer = NeuronTokenizer(param_shapes, permutation_groups, max_token_size)
            slots = self.tokenizer.slots
        else:
            raise ValueError(f"unknown tokenization {tokenization!r}; choose layer or neuron")
        self.tokenization = tokenization
        self.hidden_size = hidden_size
        sizes = self.tokenizer.slot_sizes
        k = len(sizes)
        self.theta_encoder = PerTokenLinear(sizes, [hidden_size] * k, slots=slots)
        self.future_encoder = PerTokenLinear(sizes, [hidden_size] * k, slots=slots)
        self.loss_embedder = FrequencyEmbedder(
            hidden_size, frequency_embedding_size, scale=metric_scale
        )
        self.target_embedder = FrequencyEmbedder(
            hidden_size, frequency_embedding_size, scale=metric_scale
        )
        self.step_embedder = FrequencyEmbedder(hidden_size, frequency_embedding_size)
        streams = 1 if tokenization == "neuron" else 2  # theta and theta*_j in one token or two
        self.pos_embed = nn.Parameter(torch.zeros(1, 3 + streams * k, hidden_size))  # zero-init
        if slots is not None:  # units of a group share their slot's embedding
            self.register_buffer("pos_index", torch.cat([torch.arange(3), 3 + slots]), False)
        self.blocks = nn.ModuleList(
            GPT2Block(hidden_size, num_heads, mlp_ratio) for _ in range(depth)
        )
        self.ln_f = nn.LayerNorm(hidden_size)
        self.decoder = PerTokenLinear([hidden_size] * k, sizes, zero_init=True, slots=slots)
        # Gate g_j (a linear read-out of the step embedding) of a skip from the noised input,
        # + g_j (theta*_j - theta). Zero at init (the global residual alone); near j = 0 it lets
        # the model pass theta*_j through instead of re-synthesising it with the transformer.
        self.skip_gate = nn.Linear(hidden_size, 1) if noisy_skip else None
        self.initialize_weights()
        if self.skip_gate is not None:
            nn.init.zeros_(self.skip_gate.weight)
            nn.init.zeros_(self.skip_gate.bias)

    def initialize_weights(self) -> None:
        """GPT-2 style: normal(0, 0.02) linear weights in the blocks and embedders, zero biases;
        encoders keep their per-token fan-in init, decoders stay at zero (identity at init)."""
        for module in [*self.blocks, self.loss_embedder, self.target_embedder, self.step_embedder]:
            for m in module.modules():
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=0.02)
                    nn.init.zeros_(m.bias)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        theta: torch.Tensor,
        loss: torch.Tensor,
        loss_target: torch.Tensor,
    ) -> torch.Tensor:
        """``x``: noised theta*_j ``[N, P]``; ``t``: steps ``[N]``; ``theta [N, P]``; ``loss``,
        ``loss_target``: normalised metrics ``[N]``. Returns the predicted theta* ``[N, P]``."""
        tok = self.tokenizer
        step = self.step_embedder(t)
        scalars = torch.stack(
            [self.loss_embedder(loss), self.target_embedder(loss_target), step], 1
        )
        theta_tokens = self.theta_encoder(tok.tokenize(theta))
        future_tokens = self.future_encoder(tok.tokenize(x))
        if self.tokenization == "neuron":
            h = torch.cat([scalars, theta_tokens + future_tokens], 1)
            h = h + self.pos_embed[:, self.pos_index]
        else:
            h = torch.cat([scalars, theta_tokens, future_tokens], 1) + self.pos_embed
        for block in self.blocks:
            h = block(h)
        h = self.ln_f(h[:, h.shape[1] - tok.num_tokens :])
        out = theta + tok.detokenize(self.decoder(h))
        if self.skip_gate is not None:
            out = out + self.skip_gate(step) * (x - theta)
        return out
