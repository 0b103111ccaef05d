"""Flop counting in the convention of the DiT paper: forward multiply-adds (thesis Sec. 2.3.2).

One fused multiply-add counts as one flop. ``torch.utils.flop_counter`` counts two flops per
multiply-add, so ``count_macs`` halves its total. Model-specific analytic counts (DiT's Table 2.1)
live next to the models and are checked against ``count_macs``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode


def count_macs(module: torch.nn.Module | Any, *args, **kwargs) -> int:
    """Multiply-adds of the matrix products (linear, conv, bmm, attention) of one forward call.

    Attention runs on the math backend while counting: the fused CPU kernel is invisible to the
    counter, the math path decomposes into the two batched products it is made of.
    """
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        module(*args, **kwargs)
    return counter.get_total_flops() // 2


def linear_macs(tokens: int, fan_in: int, fan_out: int) -> int:
    """Multiply-adds of a dense layer applied to ``tokens`` vectors."""
    return tokens * fan_in * fan_out


def attention_macs(query_tokens: int, key_tokens: int, dim: int) -> int:
    """Multiply-adds of ``softmax(Q K^T) V`` over all heads: ``Q K^T`` plus ``A V``."""
    return 2 * query_tokens * key_tokens * dim
