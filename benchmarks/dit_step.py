"""Throughput of one DiT training step, the recipe of thesis Sec. 2.4.

A step: the hybrid diffusion loss (``training_losses``: L_simple plus the VLB on the learned
variance) at uniform random timesteps, backward, AdamW (lr 1e-4, no weight decay), EMA update
(0.9999). Inputs are random latents and labels: no data loading, no VAE. All rows run in one process
on one shared model, optimizer and EMA. ``fp32``/``bf16 eager``: plain PyTorch, bf16 by
``torch.autocast``. ``fp32``/``bf16 compile``: the network under ``torch.compile``, as
``DiTModule(compile=True)`` (``--no-compile`` skips them; a failure is reported as the row).
``official-style`` (``--baseline official-style``): the same network and optimizer, with the loss
constants and the EMA done the way the reference DiT code does them (see ``OfficialStyleLoss``).

Columns: ``img/s`` = batch / median step time; ``ms/step`` = that median; ``peak MiB`` = on CUDA
``torch.cuda.max_memory_allocated`` (absolute: weights, grads, AdamW, EMA, activations), on CPU the
growth of resident memory over its value at the start of each timed step (``_timing``);
``x fp32`` = img/s over the ``fp32 eager`` row's; ``MFU`` = training flop/s over the device's
dense bf16 peak, for every row, with 3 x forward flops per image and forward flops 2 x
``count_macs`` of the real model.
Rows are timed round-robin one step at a time, the order reversed every round (ABBA), so drift of
the machine hits every row alike; the eager rows first, then the compiled rows, so that compiled
kernels cannot disturb the eager rows.
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Callable
from functools import partial

import numpy as np
import torch
from torch import Tensor, nn

from _timing import Row, measure
from common.diffusion import create_diffusion
from common.diffusion.likelihood import discretized_gaussian_log_likelihood, mean_flat, normal_kl
from common.nn.flops import count_macs
from common.training.ema import EMA
from diffusion_transformer.models import DiT_models


class OfficialStyleLoss:
    """The hybrid DiT loss computed the way the reference code computes it.

    Every constant lives in a float64 numpy table that is copied to the device and gathered at
    ``t`` on each use (eighteen times a step), then broadcast by adding a zero tensor of the input's
    shape; the timestep map of the respacing wrapper is rebuilt from a Python list on every call.
    Same numbers as ``GaussianDiffusion.training_losses``, which caches the tables on the device.
    """

    def __init__(self, steps: int = 1000) -> None:
        b = np.linspace(1e-4, 0.02, steps, dtype=np.float64)
        a = np.cumprod(1.0 - b)
        a_prev = np.append(1.0, a[:-1])
        self.betas = b
        self.sqrt_a, self.sqrt_1m_a = np.sqrt(a), np.sqrt(1.0 - a)
        self.recip, self.recipm1 = np.sqrt(1.0 / a), np.sqrt(1.0 / a - 1.0)
        self.post_var = b * (1.0 - a_prev) / (1.0 - a)
        self.post_logvar = np.log(np.append(self.post_var[1], self.post_var[1:]))
        self.coef1 = b * np.sqrt(a_prev) / (1.0 - a)
        self.coef2 = (1.0 - a_prev) * np.sqrt(1.0 - b) / (1.0 - a)
        self.timestep_map = list(range(steps))

    @staticmethod
    def _at(table: np.ndarray, t: Tensor, shape: torch.Size) -> Tensor:
        value = torch.from_numpy(table).to(t.device)[t].float()
        return value.view(-1, *[1] * (len(shape) - 1)) + torch.zeros(shape, device=t.device)

    def _posterior(self, x0: Tensor, xt: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        s = xt.shape
        mean = self._at(self.coef1, t, s) * x0 + self._at(self.coef2, t, s) * xt
        return mean, self._at(self.post_var, t, s), self._at(self.post_logvar, t, s)

    def __call__(self, model: Callable, x0: Tensor, t: Tensor, y: Tensor) -> Tensor:
        s, noise = x0.shape, torch.randn_like(x0)
        xt = self._at(self.sqrt_a, t, s) * x0 + self._at(self.sqrt_1m_a, t, s) * noise
        mapped = torch.tensor(self.timestep_map, device=t.device, dtype=t.dtype)[t]
        eps, var_values = torch.split(model(xt, mapped, y), s[1], dim=1)
        true_mean, _, true_logvar = self._posterior(x0, xt, t)
        frac = (var_values + 1) / 2  # variance head: [-1, 1] -> [posterior, beta] in log space
        max_log = self._at(np.log(self.betas), t, s)
        logvar = frac * max_log + (1 - frac) * self._at(self.post_logvar, t, s)
        x0_hat = self._at(self.recip, t, s) * xt - self._at(self.recipm1, t, s) * eps.detach()
        mean, _, _ = self._posterior(x0_hat, xt, t)
        self._posterior(x0, xt, t)  # the reference builds every possible target, used or not
        kl = mean_flat(normal_kl(true_mean, true_logvar, mean, logvar)) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x0, means=mean, log_scales=0.5 * logvar)
        vb = torch.where(t == 0, mean_flat(nll) / math.log(2.0), kl)
        return mean_flat((noise - eps) ** 2) + vb


@torch.no_grad()
def official_style_ema(ema: nn.Module, model: nn.Module, decay: float = 0.9999) -> None:
    """EMA as one ``mul_`` and one ``add_`` per parameter, matched by name."""
    ema_params = dict(ema.named_parameters())
    for name, param in model.named_parameters():
        ema_params[name].mul_(decay).add_(param.data, alpha=1 - decay)


def bf16_peak(device: torch.device, tflops: float | None) -> tuple[float | None, str]:
    """Dense bf16 peak of the device in flop/s and where the number comes from."""
    if tflops:
        return tflops * 1e12, "--peak-tflops"
    if device.type != "cuda":
        return None, "unknown on CPU, no MFU (--peak-tflops sets it)"
    name = torch.cuda.get_device_name(device)
    if "h200" in name.lower() and "nvl" not in name.lower():
        # Lightning misses the plain name 'NVIDIA H200' and lists the H200 with sparsity (2e15).
        return 989.4e12, f"{name}, SXM datasheet"
    from lightning.fabric.utilities.throughput import get_available_flops

    flops = get_available_flops(device, torch.bfloat16)
    return (float(flops), f"{name}, lightning") if flops else (None, f"{name}: unknown, no MFU")


def print_table(rows: list[Row], batch: int, fwd_flops: int, peak: float | None) -> None:
    """Markdown table; ``x fp32`` is relative to the first row (fp32 eager)."""
    ref = statistics.median(rows[0].times) if rows[0].times else None
    print("| variant | img/s | ms/step | peak MiB | x fp32 | MFU |\n|---|---:|---:|---:|---:|---:|")
    for r in rows:
        if r.error:
            print(f"| {r.name} | failed: {r.error} | | | | |")
            continue
        sec = statistics.median(r.times)
        mfu = f"{batch / sec * 3 * fwd_flops / peak:.1%}" if peak else "-"
        ratio = f"{ref / sec:.2f}" if ref else "-"
        print(f"| {r.name} | {batch / sec:.1f} | {sec * 1e3:.1f} | {r.peak / 2**20:.0f} | ", end="")
        print(f"{ratio} | {mfu} |")


def profile_kernels(row: Row, device: torch.device, steps: int = 3, top: int = 20) -> None:
    """Where the time of a step goes: the ``top`` device kernels of ``steps`` steps of ``row``."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            row.call()
        if device.type == "cuda":
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"\nprofile of '{row.name}' over {steps} steps:")
    print(prof.key_averages().table(sort_by=key, row_limit=top, max_name_column_width=60))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="registry name (default: DiT-XL/2 on CUDA, DiT-S/4 on CPU)")
    p.add_argument("--batch-size", type=int, help="default: 256 on CUDA, 4 on CPU")
    p.add_argument("--input-size", type=int, help="latent side (default: 32 on CUDA, 16 on CPU)")
    p.add_argument("--steps", type=int, help="timed steps per row (default: 15 CUDA, 6 CPU)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per row (compiles here)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    p.add_argument("--baseline", choices=["official-style"], help="add the reference-style row")
    p.add_argument("--peak-tflops", type=float, help="dense bf16 peak, for MFU where not known")
    p.add_argument("--bf16-only", action="store_true", help="skip the fp32 rows")
    p.add_argument(
        "--compile-mode",
        action="append",
        help="torch.compile mode(s) for extra compiled rows, e.g. max-autotune-no-cudagraphs",
    )
    p.add_argument("--fused-adam", action="store_true", help="AdamW(fused=True) for every row")
    p.add_argument("--profile", action="store_true", help="top CUDA kernels of the last bf16 row")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    name = args.model or ("DiT-XL/2" if cuda else "DiT-S/4")  # CPU: bf16 is slow where emulated
    batch = args.batch_size or (256 if cuda else 4)
    size = args.input_size or (32 if cuda else 16)
    steps = args.steps or (15 if cuda else 6)
    if cuda:  # TF32 for the fp32 rows, as the reference training script sets it
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    torch.manual_seed(0)
    model = DiT_models[name](input_size=size, in_channels=4, num_classes=1000)
    model = model.to(device).train()
    ema = EMA(model)
    fused = {"fused": True} if args.fused_adam else {}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, **fused)
    x = torch.randn(batch, 4, size, size, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    fwd_flops = 2 * count_macs(model, x[:1], torch.zeros_like(y[:1]), y[:1])
    peak, peak_src = bf16_peak(device, args.peak_tflops)
    diffusion = create_diffusion("")

    def ours(net: Callable, x0: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        return diffusion.training_losses(net, x0, t, model_kwargs={"y": labels})["loss"]

    def row(label: str, net: Callable, amp: bool, official: bool = False) -> Row:
        loss_fn = OfficialStyleLoss() if official else ours
        ema_fn = partial(official_style_ema, ema.module) if official else ema.update

        def step() -> None:
            t = torch.randint(0, 1000, (batch,), device=device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = loss_fn(net, x, t, y).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ema_fn(model)

        return Row(label, step)

    eager = [row("bf16 eager", model, True)]
    if not args.bf16_only:
        eager.insert(0, row("fp32 eager", model, False))
    groups = [eager]
    if args.baseline:
        groups[0].append(row("official-style fp32 eager", model, False, official=True))
    if not args.no_compile:
        compiled = torch.compile(model)
        group = [row("bf16 compile", compiled, True)]
        if not args.bf16_only:
            group.insert(0, row("fp32 compile", compiled, False))
        groups.append(group)
        for mode in args.compile_mode or []:
            groups.append([row(f"bf16 compile {mode}", torch.compile(model, mode=mode), True)])
    for group in groups:
        measure(group, device, args.warmup, steps)
    if args.profile:
        profile_kernels(groups[-1][-1], device)

    where = torch.cuda.get_device_name(device) if cuda else f"{torch.get_num_threads()} threads"
    memory = "max_memory_allocated" if cuda else "VmHWM growth over each step's start"
    peak_text = f"{peak / 1e12:.1f} TFLOP/s ({peak_src})" if peak else peak_src
    print(f"{name}, latents {size}^2 x 4, batch {batch}, {device} ({where})")
    print(f"torch {torch.__version__}; median of {steps} steps after {args.warmup} warm-up per row")
    gflops = model.gflops()
    print(f"forward {fwd_flops / 1e9:.2f} GFLOPs/img = 2 x count_macs (paper Gflops {gflops:.2f})")
    print(f"dense bf16 peak {peak_text}; peak MiB: {memory}\n")
    print_table([r for g in groups for r in g], batch, fwd_flops, peak)
    if args.baseline and groups[0][0].times and groups[0][-1].times:
        ratio = statistics.median(groups[0][-1].times) / statistics.median(groups[0][0].times)
        print(f"\nours / official-style, fp32 eager img/s: {ratio:.3f}")


if __name__ == "__main__":
    main()
