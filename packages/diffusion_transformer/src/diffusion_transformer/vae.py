"""Latent space (thesis Sec. 2.3.1, 2.4): the Stable Diffusion VAE, downsampling by 8.

``z = E(x) * scale`` with ``scale = 0.18215`` (SD's ``ft-ema`` / ``ft-mse`` autoencoders, the
``scaling_factor`` of their ``config.json``); decoding divides by the scale. A folder that also
holds ``latents_stats.pt`` (``{"mean", "std"}``, ``[1, C, 1, 1]``: LightningDiT's VA-VAE f16d32)
normalises each channel first, ``z = (E(x) - mean) / std * scale`` (LightningDiT
``ImgLatentDataset``, its multiplier ``scale`` 1.0). The autoencoder is loaded from a local folder
in diffusers' layout (``config.json`` + weights), for example a download of
``stabilityai/sd-vae-ft-ema``; nothing is fetched at run time.
"""

from __future__ import annotations

from pathlib import Path

import torch

STATS_FILE = "latents_stats.pt"


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
    are not trained and stay out of DiT checkpoints. ``scale`` defaults to the folder's
    ``scaling_factor``. Errors name ``key``, the caller's key."""

    def __init__(
        self, path: str | Path, scale: float | None = None, sample: bool = True, key: str = "vae"
    ) -> None:
        path = vae_folder(path, key)
        from diffusers import AutoencoderKL

        self.vae = AutoencoderKL.from_pretrained(
            str(path), local_files_only=True, low_cpu_mem_usage=False
        )
        self.vae.eval().requires_grad_(False)
        self.scale = float(self.vae.config.scaling_factor if scale is None else scale)
        self.sample = sample
        self.downsample = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.latent_channels = self.vae.config.latent_channels
        self.mean = self.std = None
        if (path / STATS_FILE).is_file():
            self.mean, self.std = _read_stats(path / STATS_FILE, self.latent_channels)

    def to(self, device) -> VAECodec:
        self.vae.to(device)
        if self.mean is not None:
            self.mean, self.std = self.mean.to(device), self.std.to(device)
        return self

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """Autoencoder latents -> model latents: channel-wise statistics, then ``scale``."""
        if self.mean is not None:
            z = (z - self.mean) / self.std
        return z * self.scale

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        """Model latents -> autoencoder latents (the inverse of :meth:`normalize`)."""
        z = latents / self.scale
        return z if self.mean is None else z * self.std + self.mean

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> model latents (a sample of the posterior, as in DiT)."""
        dist = self.vae.encode(images.to(self.vae.dtype)).latent_dist
        return self.normalize((dist.sample() if self.sample else dist.mode()).float())

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Model latents -> images in [-1, 1]."""
        return self.vae.decode(self.denormalize(latents).to(self.vae.dtype)).sample.float()


def _read_stats(path: Path, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``latents_stats.pt``: ``mean`` and ``std`` of shape [1, C, 1, 1], finite, std > 0."""
    from common.checkpoint import safe_load

    stats = safe_load(path)
    shape = (1, channels, 1, 1)
    if not isinstance(stats, dict) or not all(
        isinstance(stats.get(k), torch.Tensor) and tuple(stats[k].shape) == shape
        for k in ("mean", "std")
    ):
        raise ValueError(
            f"{path} is not a latent statistics file: expected {{'mean', 'std'}} tensors of shape "
            f"{list(shape)} (LightningDiT's latents_stats.pt); replace or remove it"
        )
    mean, std = stats["mean"].float(), stats["std"].float()
    if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
        raise ValueError(f"{path} holds a non-finite mean or a std <= 0; replace it")
    return mean, std


def build_vae(cfg: dict | None, key: str = "vae") -> VAECodec | None:
    """``None`` (pixel space) or ``{"path": ..., "scale": 0.18215}`` (no scale: the folder's
    ``scaling_factor``); ``key`` is the caller's key for the path (``vae``, or ``data.vae.path``
    in training), named in the errors."""
    if not cfg or not cfg.get("path"):
        if cfg and "path" in cfg:
            raise FileNotFoundError(f"{key} is empty: {_fix(key)}")
        return None
    return VAECodec(cfg["path"], cfg.get("scale"), cfg.get("sample", True), key)
