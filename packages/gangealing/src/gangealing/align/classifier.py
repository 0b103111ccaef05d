"""The cluster classifier of K-mode GANgealing for real images (thesis Sec. 4.3.2): the small
trunk's version (K logits); the released models' flip-aware one is
``official_stn.OfficialClusterClassifier``."""

from __future__ import annotations

import torch
from torch import nn

from gangealing.align.stn import ConvTrunk


class ClusterClassifier(nn.Module):
    """Feature trunk of T, global average pooling and a linear head over the K clusters."""

    def __init__(self, num_modes: int, input_size: int, widths: list[int] | tuple[int, ...]):
        super().__init__()
        self.trunk = ConvTrunk(input_size, tuple(widths))
        self.head = nn.Linear(self.trunk.out_channels, num_modes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(images).mean((2, 3)))


def trunk_widths(trunk: ConvTrunk) -> list[int]:
    return [m.out_channels for m in trunk.layers if isinstance(m, nn.Conv2d)][::2]
