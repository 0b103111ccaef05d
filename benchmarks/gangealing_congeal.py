"""Congealing throughput of the released GANgealing transformer (``official_stn``).

The network of the released models at its real size (flow size 128, 256 px input, channel
multiplier 0.5, 512 channels up to 32 px: 43.1M parameters, as the official code builds it),
random weights, inputs 256 px, output 256 px (the flow interpolated, as ``gangealing.congeal
size=256`` does). Rows, timed
round-robin with the order reversed every round: the official test settings (``iters`` 1 and 3,
flip inference on and off) and, as the baseline, plain bilinear ``grid_sample`` in place of the
mipmap warp (what the sampling costs). Columns: images/s (batch over the median time), ms per
batch, and the ratio to the ``iters=1`` row. CPU default batch 4; on CUDA, batch 32.
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

from _timing import round_robin
from gangealing.align.official_stn import OfficialComposedSTN


class PlainWarp(torch.nn.Module):
    """The baseline sampler: one bilinear ``grid_sample``, no anti-aliasing."""

    def forward(self, images, grid, padding_mode="border"):
        return F.grid_sample(images, grid, padding_mode=padding_mode, align_corners=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cuda = torch.cuda.is_available()
    parser.add_argument("--batch", type=int, default=32 if cuda else 4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    device = torch.device("cuda" if cuda else "cpu")
    torch.manual_seed(0)
    stn = OfficialComposedSTN(  # the released architecture (conf/model/stn/paper.yaml)
        transforms=["similarity", "flow"], flow_size=128, supersize=256, channel_multiplier=0.5,
        num_heads=1, flow_downsample=8, max_channels=512,
    ).to(device).eval()  # fmt: skip
    params = sum(p.numel() for p in stn.parameters())
    x = torch.rand(args.batch, 3, 256, 256, device=device) * 2 - 1

    def run(iters: int, flips: bool, plain: bool = False):
        def step() -> None:
            warpers = [s.warp_head.warper for s in stn.stns]
            if plain:
                for s in stn.stns:
                    s.warp_head.warper = PlainWarp()
            try:
                stn.congeal(x, output_size=256, iters=iters, flips=flips)
            finally:
                for s, w in zip(stn.stns, warpers, strict=True):
                    s.warp_head.warper = w

        return step

    rows = {
        "iters=1": run(1, False),
        "iters=3": run(3, False),
        "iters=3, flips": run(3, True),
        "iters=1, plain bilinear": run(1, False, plain=True),
    }
    with torch.inference_mode():
        times = round_robin(rows, args.rounds)
    print(f"official STN, {params / 1e6:.1f}M parameters, batch {args.batch}, {device}")
    base = statistics.median(times["iters=1"])
    print(f"{'row':<26}{'img/s':>9}{'ms/batch':>10}{'x iters=1':>11}")
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"{name:<26}{args.batch / t:>9.2f}{t * 1e3:>10.0f}{base / t:>11.2f}")


if __name__ == "__main__":
    main()
