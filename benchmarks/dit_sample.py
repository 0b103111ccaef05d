"""Sampling speed of a DiT: DDPM-250, DDIM-50 and flow-Euler-50 side by side (thesis Sec. 2.3.1).

Every row draws one batch of latents with the package's sampler,
``diffusion_transformer.sampling.sample_latents``, from a ``DiT`` built from the package's model
configs (``conf/model/<size>.yaml``, 1000 classes, learned sigma), with classifier-free guidance:
one forward pass on the doubled batch per step
(``common.diffusion.guidance.Guidance``). DDPM (the
thesis' FID setting, 250 respaced steps) and DDIM (eta 0) use ``conf/diffusion/ddpm.yaml``; the
flow row integrates the same network with Euler steps as a velocity field
(``conf/diffusion/flow.yaml``), which only measures speed. Weights are random: the speed does not
depend on them. Rows run in fp32 (TF32 matmuls on GPUs unless ``--no-tf32``, as ``tf32: true`` in
training) and, on GPUs, bf16 autocast with the sampler arithmetic in fp32.

Columns: ``fwd/img`` = network evaluations per image (steps x 2 with guidance); ``Gflops/img`` =
``fwd/img`` x ``DiT.gflops()`` (the paper's multiply-adds, Sec. 2.5.2); ``img/s`` = batch size /
median wall time of a whole sampling run, CUDA synchronised, after a short warm-up run of every row;
``x DDPM`` = img/s over the DDPM row's at the same precision; ``x fp32`` = img/s over the same
sampler's fp32 row; ``peak MiB`` (CUDA) = ``torch.cuda.max_memory_allocated``. With ``--vae`` the
decoder (fp32) is timed too and ``img/s +VAE`` counts sampling plus decoding. Rows are timed
round-robin, one run at a time, the order reversed every round, so drift hits every row alike.
"""

from __future__ import annotations

import argparse
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import OmegaConf

import diffusion_transformer
from _timing import peak_read, peak_reset, short_error, timed
from diffusion_transformer.models import DiT, dit
from diffusion_transformer.sampling import sample_latents

CONF = Path(diffusion_transformer.__file__).parent / "conf"
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


@dataclass
class Row:
    name: str
    sampler: str
    steps: int
    diffusion: dict
    precision: str
    times: list[float] = field(default_factory=list)
    decode_times: list[float] = field(default_factory=list)
    peak: int = 0
    error: str | None = None

    def img_per_s(self, batch: int, with_decode: bool = False) -> float:
        seconds = statistics.median(self.times)
        if with_decode:
            seconds += statistics.median(self.decode_times)
        return batch / seconds


def build_model(name: str, input_size: int) -> DiT:
    """``DiT-<size>/<patch>`` of ``conf/model/<size>.yaml`` built as in training (``models.dit``:
    Table 2.1's sizes from ``DIT_CONFIGS``, and ``tiny``)."""
    sizes = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
    match = re.fullmatch(r"DiT-(\w+)/(\d+)", name)
    if match is None or match[1].lower() not in sizes:
        raise SystemExit(
            f"--model {name!r}: use DiT-<size>/<patch> with a size of conf/model "
            f"({', '.join(s.upper() if s != 'tiny' else s for s in sizes)}), e.g. DiT-XL/2"
        )
    spec = OmegaConf.to_container(OmegaConf.load(CONF / "model" / f"{match[1].lower()}.yaml"))
    return dit(
        **spec,
        input_size=input_size,
        patch_size=int(match[2]),
        in_channels=4,
        num_classes=1000,
        class_dropout_prob=0.1,  # the null class that guidance needs
        learn_sigma=True,
    )


def diffusion_config(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONF / "diffusion" / f"{name}.yaml"))


def measure(rows, model, labels, noise, args, vae, device) -> None:
    """Warm every row up with a short run, then time whole runs round-robin (ABBA order)."""

    def run(row: Row, steps: int) -> torch.Tensor:
        return sample_latents(
            model,
            row.diffusion,
            labels,
            noise,
            sampler=row.sampler,
            steps=steps,
            cfg_scale=args.cfg_scale,
            autocast_dtype=PRECISIONS[row.precision],
        )

    for row in rows:
        try:
            latents = run(row, args.warmup_steps)
            if vae is not None:
                timed(lambda z=latents: vae.decode(z), device)
        except Exception as e:  # noqa: BLE001 (out of memory, bf16 unsupported: the row's cell)
            row.error = short_error(e)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    for i in range(args.reps):
        for row in rows[:: 1 if i % 2 == 0 else -1]:
            if row.error is not None:
                continue
            base = peak_reset(device) if device.type == "cuda" else 0
            latents, seconds = timed(lambda row=row: run(row, row.steps), device)
            row.times.append(seconds)
            if vae is not None:
                row.decode_times.append(timed(lambda z=latents: vae.decode(z), device)[1])
            if device.type == "cuda":
                row.peak = max(row.peak, peak_read(device, base))


def print_table(
    rows: list[Row], batch: int, forwards: int, gflops: float, cuda: bool, fp32_label: str
) -> None:
    vae = any(r.decode_times for r in rows)
    head = ["sampler", "precision", "steps", "fwd/img", "Gflops/img", "img/s", "s/batch"]
    head += ["x DDPM", "x fp32"] + (["VAE s/batch", "img/s +VAE"] if vae else [])
    head += ["peak MiB"] if cuda else []
    print("| " + " | ".join(head) + " |\n|" + "---|" * 3 + "---:|" * (len(head) - 3))
    done = {(r.name, r.precision): r for r in rows if r.error is None}
    for r in rows:
        precision = fp32_label if r.precision == "fp32" else r.precision
        cells = [r.name, precision, str(r.steps), str(r.steps * forwards)]
        cells.append(f"{r.steps * forwards * gflops:,.1f}")
        if r.error is not None:
            print("| " + " | ".join(cells) + f" | failed: {r.error} |")
            continue
        speed = r.img_per_s(batch)
        ddpm, fp32 = done.get((rows[0].name, r.precision)), done.get((r.name, "fp32"))
        cells += [f"{speed:.2f}", f"{statistics.median(r.times):.2f}"]
        cells += [f"{speed / ddpm.img_per_s(batch):.2f}" if ddpm else "-"]
        cells += [f"{speed / fp32.img_per_s(batch):.2f}" if fp32 else "-"]
        if vae:
            cells += [f"{statistics.median(r.decode_times):.2f}", f"{r.img_per_s(batch, True):.2f}"]
        if cuda:
            cells.append(f"{r.peak / 2**20:.0f}")
        print("| " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="DiT-<size>/<patch> (default: DiT-XL/2 on CUDA, DiT-tiny/2 CPU)")
    p.add_argument("--input-size", type=int, help="latent side (default: 32 on CUDA, 16 on CPU)")
    p.add_argument("--batch-size", type=int, help="images per run (default: 64 CUDA, 4 CPU)")
    p.add_argument("--cfg-scale", type=float, default=4.0, help="1 turns guidance off")
    p.add_argument("--ddpm-steps", type=int, default=250)
    p.add_argument("--ddim-steps", type=int, default=50)
    p.add_argument("--flow-steps", type=int, default=50)
    p.add_argument("--precision", help="comma list of fp32,bf16 (default: both CUDA, fp32 CPU)")
    p.add_argument("--reps", type=int, help="timed runs per row (default: 2 on CUDA, 3 on CPU)")
    p.add_argument("--warmup-steps", type=int, default=3, help="steps of the warm-up run per row")
    p.add_argument("--vae", help="local diffusers AutoencoderKL folder: time decoding too")
    p.add_argument("--no-tf32", action="store_true", help="strict fp32 matmuls on GPUs")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, help="CPU threads (default: 1, steady on shared cores)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    name = args.model or ("DiT-XL/2" if cuda else "DiT-tiny/2")
    size = args.input_size or (32 if cuda else 16)
    batch = args.batch_size or (64 if cuda else 4)
    args.reps = args.reps or (2 if cuda else 3)
    precisions = (args.precision or ("fp32,bf16" if cuda else "fp32")).split(",")
    if unknown := set(precisions) - set(PRECISIONS):
        raise SystemExit(f"--precision: unknown {', '.join(sorted(unknown))}; use fp32 and/or bf16")
    tf32 = cuda and not args.no_tf32
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    else:
        torch.set_num_threads(args.threads or 1)

    torch.manual_seed(args.seed)
    model = build_model(name, size).to(device).eval()
    vae = None
    if args.vae:
        from diffusion_transformer.vae import VAECodec

        vae = VAECodec(args.vae, key="--vae").to(device)
    labels = torch.randint(0, model.num_classes, (batch,), device=device)
    noise = torch.randn(batch, model.in_channels, size, size, device=device)
    ddpm, flow = diffusion_config("ddpm"), diffusion_config("flow")
    samplers = [
        (f"DDPM-{args.ddpm_steps}", "ddpm", args.ddpm_steps, ddpm),
        (f"DDIM-{args.ddim_steps}", "ddim", args.ddim_steps, ddpm),
        (f"flow-Euler-{args.flow_steps}", "euler", args.flow_steps, flow),
    ]
    rows = [Row(n, s, k, d, prec) for prec in precisions for n, s, k, d in samplers]
    measure(rows, model, labels, noise, args, vae, device)

    guided = args.cfg_scale != 1.0
    forwards = 2 if guided else 1
    where = torch.cuda.get_device_name(device) if cuda else f"{torch.get_num_threads()} thread(s)"
    guidance = f"cfg scale {args.cfg_scale}, one forward of 2 x {batch} per step"
    print(f"{name}, latents {size}^2 x 4, batch {batch}, {guidance if guided else 'no guidance'}")
    print(
        f"{device} ({where}), torch {torch.__version__}; median of {args.reps} runs per row ",
        end="",
    )
    print(f"after a {args.warmup_steps}-step warm-up run; random weights")
    print(f"model {model.gflops():.2f} Gflops per forward (DiT.gflops(), multiply-adds)")
    if vae is not None:
        print(f"VAE decoder {args.vae} in fp32, {size * vae.downsample}px images")
    print()
    print_table(rows, batch, forwards, model.gflops(), cuda, "fp32 (TF32)" if tf32 else "fp32")
    print(
        f"\nflow-Euler-{args.flow_steps} integrates this DDPM-parameterised network as a velocity "
        "field: its samples are meaningless, the row measures sampler speed only."
    )


if __name__ == "__main__":
    main()
