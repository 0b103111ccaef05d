"""Sample images from a DiT checkpoint (ours or an official one).

    python -m diffusion_transformer.sample \\
        ckpt=outputs/diffusion_transformer/train/<run>/checkpoints/last.ckpt
    python -m diffusion_transformer.sample ckpt=DiT-XL-2-256x256.pt vae=/models/sd-vae-ft-ema \\
        cfg_scale=4.0 labels=[207,360,387,974] sampler=ddpm sampling_steps=250

Writes ``grid.png`` and ``samples.npz`` (``arr_0``: uint8 [N, H, W, 3], ADM's evaluator format;
``labels``: the class of each sample) and prints their paths.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from common.cli import hydra_main
from common.data.images import save_grid, save_npz, to_uint8
from common.devices import pick_device
from diffusion_transformer.checkpoints import load_dit
from diffusion_transformer.sampling import sample_latents
from diffusion_transformer.vae import build_vae

# What an official checkpoint was trained with (Sec. 2.4).
OFFICIAL_DIFFUSION = {"objective": "ddpm", "noise_schedule": "linear", "diffusion_steps": 1000}


@dataclass
class SampleResult:
    grid: Path
    npz: Path
    images: np.ndarray
    labels: np.ndarray


def choose_labels(labels, num_samples: int, num_classes: int, generator: torch.Generator):
    """Given labels cycled to ``num_samples``, or uniformly random classes when none are given."""
    if labels is None or len(labels) == 0:
        return torch.randint(0, num_classes, (num_samples,), generator=generator)
    labels = torch.as_tensor(list(labels), dtype=torch.long)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got {labels.tolist()}")
    return labels.repeat(math.ceil(num_samples / len(labels)))[:num_samples]


def sample(cfg: DictConfig) -> SampleResult:
    if not cfg.get("ckpt"):
        raise ValueError("set ckpt=<path to a .ckpt, ema.pt or official DiT .pt file>")
    device = pick_device(cfg.device)
    model, meta = load_dit(
        cfg.ckpt,
        model=cfg.arch,
        image_size=cfg.image_size,
        num_classes=cfg.num_classes,
        use_ema=cfg.use_ema,
        cfg_channels=cfg.cfg_channels,
        num_heads=cfg.num_heads,
    )
    model.to(device)
    diffusion_cfg = dict(meta.get("diffusion") or OFFICIAL_DIFFUSION)
    vae_cfg = meta.get("vae")
    if cfg.vae:
        vae_cfg = {**(vae_cfg or {}), "path": cfg.vae}
    vae = build_vae(vae_cfg)
    if vae is None and model.in_channels == 4:
        raise FileNotFoundError(
            "this checkpoint generates 4-channel VAE latents: set vae=<local folder of the "
            "Stable Diffusion VAE (sd-vae-ft-ema or sd-vae-ft-mse)> to decode them"
        )
    if vae is not None:
        vae.to(device)
    precision = cfg.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]

    generator = torch.Generator().manual_seed(cfg.seed)
    labels = choose_labels(cfg.labels, cfg.num_samples, model.num_classes, generator)
    images = []
    batches = range(0, cfg.num_samples, cfg.batch_size)
    for start in tqdm(batches, desc="batches", disable=not cfg.progress):
        y = labels[start : start + cfg.batch_size].to(device)
        noise = torch.randn(
            len(y), model.in_channels, model.input_size, model.input_size, generator=generator
        ).to(device)
        step_gen = torch.Generator(device=device).manual_seed(cfg.seed * 100_003 + start)
        x = sample_latents(
            model,
            diffusion_cfg,
            y,
            noise,
            sampler=cfg.sampler,
            steps=cfg.sampling_steps,
            cfg_scale=cfg.cfg_scale,
            clip_denoised=vae is None,
            autocast_dtype=autocast,
            generator=step_gen,
        )
        if vae is not None:
            x = vae.decode(x)
        images.append(to_uint8(x))
    images_np = np.concatenate(images)
    out_dir = Path(cfg.out)
    grid = save_grid(images_np[: cfg.grid_size], out_dir / "grid.png")
    npz = save_npz(images_np, out_dir / "samples.npz", labels=labels.numpy())
    print(f"sample grid : {grid}")
    print(f"samples npz : {npz} ({len(images_np)} images)")
    return SampleResult(grid, npz, images_np, labels.numpy())


# What makes sense for each number this command reads (common.errors.check_values).
CHECKS = {
    "num_samples": "int>=1",
    "batch_size": "int>=1",
    "grid_size": "int>=1",
    "seed": "int>=0",
    "cfg_scale": ">=0",
    "sampling_steps": "int>=1|null",
    "image_size": "int>=1|null",
    "num_classes": "int>=1|null",
    "num_heads": "int>=1|null",
}


# Former spellings, kept one release (the keys of the training configs and of every command).
LEGACY = {"steps": "sampling_steps", "out_dir": "out"}


@hydra_main(
    "sample",
    input_paths=("ckpt", "vae"),
    checks=CHECKS,
    aliases={"model": "arch"},
    legacy_flags=LEGACY,
)
def main(cfg: DictConfig) -> None:
    OmegaConf.resolve(cfg)
    sample(cfg)


if __name__ == "__main__":
    main()
