"""Building the Spatial Transformers T of a GANgealing run (thesis Sec. 4.3.1) from its config:
``paper`` (the released network, ``official_stn``) or the small CPU trunk (``stn``). Shared by
training (``training.module``) and inference (``align.congealer``)."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import torch
from torch import nn

from common.errors import require_positive_int
from gangealing.align.official_stn import OfficialComposedSTN
from gangealing.align.stn import (
    ComposedTransformer,
    FlowTransformer,
    SimilarityTransformer,
    STNOutput,
)

TRANSFORMS = ("paper", "similarity", "flow", "composed")


def build_paper_transformer(
    resolution: int, num_modes: int, stn: dict[str, Any], supersize: int | None = None
) -> OfficialComposedSTN:
    """The thesis' T (Sec. 4.3.1) as released: ``ComposedSTN(['similarity', 'flow'])`` with K
    heads on one trunk, regressing at ``resolution`` (official ``flow_size``) from inputs of
    ``supersize`` px at test time (official ``real_size``)."""
    if resolution < 64 or resolution & (resolution - 1):
        raise ValueError(
            f"resolution={resolution} does not fit transform=paper (the released STN regresses "
            "its flow at resolution / 8 down to 4 px): pass a power of two >= 64, or "
            "model=stn/small for the small CPU trunk"
        )
    if supersize % resolution:
        raise ValueError(
            f"stn.input_size={supersize} is not a multiple of resolution={resolution}; pass a "
            "multiple (the official real_size is 2x the flow size) or leave it null"
        )
    return OfficialComposedSTN(
        flow_size=resolution,
        supersize=int(supersize or resolution),
        channel_multiplier=float(stn.get("channel_multiplier", 0.5)),
        num_heads=num_modes,
        flow_downsample=int(stn.get("flow_downsample", 8)),
        max_channels=int(stn.get("max_channels", 512)),
    )


def build_transformer(transform: str, resolution: int, stn: dict[str, Any]) -> nn.Module:
    """One small-trunk Spatial Transformer T (Sec. 4.3.1): ``similarity``, ``flow`` or their
    composition (the CPU option; ``paper`` is :func:`build_paper_transformer`)."""
    stn = dict(stn)
    input_size = int(stn.get("input_size") or resolution)
    widths = tuple(stn.get("widths", (32, 64, 128, 128)))
    padding = stn.get("padding_mode", "reflection")
    common = {"input_size": input_size, "widths": widths, "output_size": resolution}
    similarity = lambda: SimilarityTransformer(**common, padding_mode=padding)  # noqa: E731
    flow_size = require_positive_int("model.flow_size", stn.get("flow_size", 16))
    flow = lambda: FlowTransformer(  # noqa: E731
        **common, flow_size=flow_size, padding_mode=padding
    )
    if transform == "similarity":
        return similarity()
    if transform == "flow":
        return flow()
    if transform == "composed":
        return ComposedTransformer(similarity(), flow())
    raise ValueError(f"unknown transform {transform!r}: use one of {TRANSFORMS}")


def paper_supersize(stn: dict[str, Any], resolution: int, generator_size: int) -> int:
    """Test-time input size of a ``paper`` T: ``stn.input_size``, else the generator's size when
    it is a multiple of ``resolution`` (official ``real_size = gen_size``), else ``resolution``."""
    if stn.get("input_size"):
        return int(stn["input_size"])
    return generator_size if generator_size % resolution == 0 else resolution


def head_outputs(out: STNOutput, num_heads: int) -> list[STNOutput]:
    """Split image-major outputs [N * K] of a K-head T into K outputs [N]."""

    def pick(value: torch.Tensor | None, k: int) -> torch.Tensor | None:
        return None if value is None else value.unflatten(0, (-1, num_heads))[:, k]

    return [
        STNOutput(**{f.name: pick(getattr(out, f.name), k) for f in fields(STNOutput)})
        for k in range(num_heads)
    ]
