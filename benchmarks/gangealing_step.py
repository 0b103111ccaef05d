"""GANgealing training step: the released transformer (``model=stn/paper``) against the small trunk.

One optimisation step of ``GangealingModule`` (Eqs. 4.3-4.6: generate pairs, warp, perceptual
distance, TV and identity losses, backward, Adam) with a random 256 px StyleGAN2 of the paper's
widths, the offline ``pyramid_l1`` distance (no VGG weights here), K = 1, at the official
``flow_size`` 128: ``model=stn/paper`` (43.1M parameters) and the small CPU trunk
``model=stn/small`` (the option kept for CPU runs), both built from ``gangealing.train``'s config,
timed round-robin with the order reversed every round. Columns: samples/s (batch over the median
step), ms per step, parameters of T and the ratio to the paper row. CPU default batch 2; on CUDA,
batch 5 (the official per-GPU batch).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from _timing import round_robin
from gangealing.stylegan2.networks import Generator, save_generator
from gangealing.training.module import GangealingModule


def _step(module: GangealingModule, optimiser: torch.optim.Optimizer) -> None:
    x, y = module.pairs(module.hparams.batch_size, psi=0.5)
    loss = module.alignment_losses(module.stns, x, y)["loss"]
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cuda = torch.cuda.is_available()
    parser.add_argument("--batch", type=int, default=5 if cuda else 2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=256, help="generator size (px); T at half")
    args = parser.parse_args()
    device = torch.device("cuda" if cuda else "cpu")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        generator = Path(tmp) / "g.pt"
        save_generator(generator, Generator(args.size, 512, 8))
        common = [f"generator={generator}", f"resolution={args.size // 2}", "pca_samples=4096",
                  "loss.name=pyramid_l1", f"batch_size={args.batch}"]  # fmt: skip
        modules = {}
        with initialize_config_module("gangealing.conf", version_base="1.3"):
            for name, model in (("paper", "stn/paper"), ("small trunk", "stn/small")):
                cfg = compose("train", overrides=[*common, f"model={model}"])
                modules[name] = instantiate(cfg.module).to(device)
    steps = {}
    for name, module in modules.items():
        module.on_fit_start()
        optimiser = torch.optim.Adam(module.stns.parameters(), lr=1e-3)
        steps[name] = (module, optimiser)
    times = round_robin({name: lambda s=s: _step(*s) for name, s in steps.items()}, args.rounds)
    print(
        f"GANgealing step, {args.size} px StyleGAN2, flow size {args.size // 2}, "
        f"batch {args.batch}, {device}"
    )
    base = statistics.median(times["paper"])
    print(f"{'row':<14}{'samples/s':>11}{'ms/step':>10}{'T params':>11}{'x paper':>9}")
    for name, ts in times.items():
        med = statistics.median(ts)
        params = sum(p.numel() for p in steps[name][0].stns.parameters())
        print(
            f"{name:<14}{args.batch / med:>11.2f}{med * 1000:>10.0f}"
            f"{params / 1e6:>10.2f}M{base / med:>9.2f}"
        )


if __name__ == "__main__":
    main()
