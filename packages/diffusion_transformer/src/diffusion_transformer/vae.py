"""Latent space (thesis Sec. 2.3.1, 2.4): the Stable Diffusion VAE, downsampling by 8.

``z = E(x) * scale`` with ``scale = 0.18215`` (SD's ``ft-ema`` / ``ft-mse`` autoencoders); decoding
divides by the scale. The autoencoder is loaded from a local folder in diffusers' layout
(``config.json`` + weights), for example a download of ``stabilityai/sd-vae-ft-ema``; nothing is
fetched at run time.
"""

from __future__ import annotations

from pathlib import Path

import torch

SD_VAE_SCALE = 0.18215


def _fix(key: str) -> str:
    """The fix, naming the caller's key: ``vae`` (sample, extract_latents, export_diffusers) or
    ``data.vae.path`` (train, where ``data.vae=null`` is pixel space)."""
    node, dot, _ = key.rpartition(".")
    pixel = f", or train in pixel space with {node}=null" if dot else ""
    return f"set {key}=<local diffusers folder of e.g. stabilityai/sd-vae-ft-ema>{pixel}"


def vae_folder(path: str | Path, key: str = "vae") -> Path:
    """``path`` if it holds a diffusers ``AutoencoderKL`` (``config.json``), else an error."""
    path = Path(path).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"no VAE at {path} (expected a diffusers AutoencoderKL folder with config.json, "
            f"downloaded on a machine with internet): {_fix(key)}"
        )
    return path


class VAECodec:
    """Frozen ``diffusers.AutoencoderKL`` wrapper. Not an ``nn.Module`` on purpose: its weights
    are not trained and stay out of DiT checkpoints. Errors name ``key``, the caller's key."""

    def __init__(
        self, path: str | Path, scale: float = SD_VAE_SCALE, sample: bool = True, key: str = "vae"
    ) -> None:
        path = vae_folder(path, key)
        from diffusers import AutoencoderKL

        self.vae = AutoencoderKL.from_pretrained(
            str(path), local_files_only=True, low_cpu_mem_usage=False
        )
        self.vae.eval().requires_grad_(False)
        self.scale = scale
        self.sample = sample
        self.downsample = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.latent_channels = self.vae.config.latent_channels

    def to(self, device) -> VAECodec:
        self.vae.to(device)
        return self

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> scaled latents (a sample of the posterior, as in DiT)."""
        dist = self.vae.encode(images.to(self.vae.dtype)).latent_dist
        z = dist.sample() if self.sample else dist.mode()
        return z.float() * self.scale

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images in [-1, 1]."""
        return self.vae.decode((latents / self.scale).to(self.vae.dtype)).sample.float()


def build_vae(cfg: dict | None, key: str = "vae") -> VAECodec | None:
    """``None`` (pixel space) or ``{"path": ..., "scale": 0.18215}``; ``key`` is the caller's key
    for the path (``vae``, or ``data.vae.path`` in training), named in the errors."""
    if not cfg or not cfg.get("path"):
        if cfg and "path" in cfg:
            raise FileNotFoundError(f"{key} is empty: {_fix(key)}")
        return None
    return VAECodec(cfg["path"], cfg.get("scale", SD_VAE_SCALE), cfg.get("sample", True), key)
