"""Building the Spatial Transformers T of a GANgealing run (thesis Sec. 4.3.1) from its ``model``
config: the released network (``official_stn.OfficialComposedSTN``, K heads on one trunk) or the
small CPU trunk (:class:`SmallTransformers`, one network per mode). Training
(``training.module``) and inference (``align.congealer``) build them the same way,
:func:`build_transformers`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any

import torch
from torch import nn

from common.checkpoint import build_model
from common.errors import require_positive_int
from gangealing.align.official_stn import OfficialComposedSTN
from gangealing.align.stn import (
    ComposedTransformer,
    FlowTransformer,
    SimilarityTransformer,
    STNOutput,
)

SMALL_TRANSFORMS = ("similarity", "flow", "composed")


class SmallTransformers(nn.ModuleList):
    """K small-trunk Spatial Transformers T_k, one per mode (the CPU option of ``model=stn/small``):
    ``similarity``, ``flow`` or ``composed`` (similarity, then flow on its output)."""

    def __init__(
        self,
        transform: str,
        num_heads: int,
        input_size: int,
        widths: Sequence[int],
        flow_size: int,
        padding_mode: str,
    ) -> None:
        if transform not in SMALL_TRANSFORMS:
            raise ValueError(
                f"unknown transform {transform!r}: use one of {', '.join(SMALL_TRANSFORMS)}"
            )
        flow_size = require_positive_int("model.flow_size", flow_size)
        common = {"input_size": int(input_size), "widths": tuple(widths)}

        def similarity() -> SimilarityTransformer:
            return SimilarityTransformer(**common, padding_mode=padding_mode)

        def flow() -> FlowTransformer:
            return FlowTransformer(**common, flow_size=flow_size, padding_mode=padding_mode)

        def one() -> nn.Module:
            if transform == "composed":
                return ComposedTransformer(similarity(), flow())
            return similarity() if transform == "similarity" else flow()

        super().__init__(one() for _ in range(num_heads))
        self.transform, self.num_heads, self.input_size = transform, num_heads, int(input_size)

    @property
    def predicts_flow(self) -> bool:
        return self.transform != "similarity"


#: The ``_target_`` of every Spatial Transformer a ``model`` config (or a congealer file) may name.
TRANSFORMERS = {
    "gangealing.align.official_stn.OfficialComposedSTN": OfficialComposedSTN,
    "gangealing.align.transformers.SmallTransformers": SmallTransformers,
}


def build_transformers(model: Mapping[str, Any]) -> OfficialComposedSTN | SmallTransformers:
    """The K Spatial Transformers of a ``model`` config (``conf/model/stn/*.yaml``: a
    ``_target_`` and its constructor's arguments), built by ``hydra.utils.instantiate``. Only the
    targets of :data:`TRANSFORMERS` are built: a congealer file names its own, and a file must
    never choose what code runs (``common.checkpoint.build_model``)."""
    return build_model(model, TRANSFORMERS)


def head_outputs(out: STNOutput, num_heads: int) -> list[STNOutput]:
    """Split image-major outputs [N * K] of a K-head T into K outputs [N]."""

    def pick(value: torch.Tensor | None, k: int) -> torch.Tensor | None:
        return None if value is None else value.unflatten(0, (-1, num_heads))[:, k]

    return [
        STNOutput(**{f.name: pick(getattr(out, f.name), k) for f in fields(STNOutput)})
        for k in range(num_heads)
    ]
