"""StyleGAN2 training iteration speed: depthwise FIR resampling vs the batch-folded baseline.

One iteration is the core of
``gangealing.training.gan_module.StyleGAN2Module.training_step`` without the lazy regularisers: a D
step on reals and detached fakes (logistic loss, Adam) and a G step through D (non-saturating loss,
Adam), with style mixing off. Both rows share one generator and one discriminator in this process
and are timed round-robin, the order reversed every round. ``depthwise`` is the package's
``upfirdn2d`` (one ``conv2d`` with ``groups=C``); ``batch-folded`` swaps in the formulation that
folds the channels into the batch and runs a single-channel ``conv2d``, which gives the same
numbers. Columns: images/s (batch over the median iteration time), ms per iteration, and the
speed-up over the baseline row.

CPU default: ``model=stylegan2/tiny`` widths at 32x32, batch 16. On CUDA: the
``model=stylegan2/paper`` widths at 256x256, batch 32 (the thesis' GAN resolution, Sec. 4.4.2).
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from _timing import round_robin
from gangealing.stylegan2 import ops as stylegan2_ops
from gangealing.stylegan2.networks import Discriminator, Generator

TINY_CHANNELS = {4: 32, 8: 32, 16: 32, 32: 16, 64: 16, 128: 8, 256: 8}


def upfirdn2d_batch_folded(
    input: Tensor, kernel: Tensor, up: int = 1, down: int = 1, pad: Sequence[int] = (0, 0)
) -> Tensor:
    """The baseline: channels folded into the batch, one single-channel ``conv2d``."""
    x0, x1, y0, y1 = stylegan2_ops._expand_pad(pad)
    batch, channel, height, width = input.shape
    kh, kw = kernel.shape
    out = input.reshape(batch * channel, 1, height, width)
    if up > 1:
        out = out.reshape(batch * channel, 1, height, 1, width, 1)
        out = F.pad(out, (0, up - 1, 0, 0, 0, up - 1))
        out = out.reshape(batch * channel, 1, height * up, width * up)
    out = F.pad(out, (x0, x1, y0, y1))
    weight = torch.flip(kernel, (0, 1)).to(out).reshape(1, 1, kh, kw)
    out = F.conv2d(out, weight, stride=down)
    return out.reshape(batch, channel, out.shape[-2], out.shape[-1])


def make_iteration(
    generator: Generator, discriminator: Discriminator, batch: int, device: torch.device
) -> Callable[[], None]:
    g_opt = torch.optim.Adam(generator.parameters(), lr=0.002, betas=(0.0, 0.99))
    d_opt = torch.optim.Adam(discriminator.parameters(), lr=0.002, betas=(0.0, 0.99))
    real = torch.randn(batch, 3, generator.size, generator.size, device=device)

    def iteration() -> None:
        z = torch.randn(batch, generator.style_dim, device=device)
        with torch.no_grad():
            fake, _ = generator([z])
        d_loss = F.softplus(discriminator(fake)).mean() + F.softplus(-discriminator(real)).mean()
        d_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        d_opt.step()
        fake, _ = generator([torch.randn_like(z)])
        g_loss = F.softplus(-discriminator(fake)).mean()
        g_opt.zero_grad(set_to_none=True)
        g_loss.backward()
        g_opt.step()

    return iteration


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cuda = torch.cuda.is_available()
    parser.add_argument("--resolution", type=int, default=256 if cuda else 32)
    parser.add_argument("--batch-size", type=int, default=32 if cuda else 16)
    parser.add_argument(
        "--paper", action="store_true", default=cuda, help="model=stylegan2/paper widths"
    )
    parser.add_argument("--steps", type=int, default=20 if cuda else 10)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    device = torch.device("cuda" if cuda else "cpu")
    torch.manual_seed(0)
    if args.paper:
        generator = Generator(args.resolution, style_dim=512, n_mlp=8, channel_multiplier=2)
        discriminator = Discriminator(args.resolution, channel_multiplier=2)
    else:
        generator = Generator(args.resolution, style_dim=64, n_mlp=2, channels=TINY_CHANNELS)
        discriminator = Discriminator(args.resolution, channels=TINY_CHANNELS)
    generator.to(device)
    discriminator.to(device)
    iteration = make_iteration(generator, discriminator, args.batch_size, device)
    package_op = stylegan2_ops.upfirdn2d
    rows = {"batch-folded (baseline)": upfirdn2d_batch_folded, "depthwise (ours)": package_op}

    def with_op(op):
        def run() -> None:
            stylegan2_ops.upfirdn2d = op
            iteration()

        return run

    try:
        times = round_robin(
            {name: with_op(op) for name, op in rows.items()}, args.steps, warmup=args.warmup
        )
    finally:
        stylegan2_ops.upfirdn2d = package_op
    widths = "model=stylegan2/paper" if args.paper else "model=stylegan2/tiny"
    print(
        f"StyleGAN2 {widths} at {args.resolution}x{args.resolution}, batch {args.batch_size}, "
        f"{device} ({torch.get_num_threads()} threads), torch {torch.__version__}; "
        f"median of {args.steps} iterations after {args.warmup} warm-up"
    )
    base = statistics.median(times["batch-folded (baseline)"])
    print(f"{'FIR resampling':<24} {'img/s':>8} {'ms/iter':>9} {'speed-up':>9}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<24} {args.batch_size / med:>8.1f} {1e3 * med:>9.1f} {base / med:>9.2f}")


if __name__ == "__main__":
    main()
