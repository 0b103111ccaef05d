"""Encode an image folder into VAE latent shards once, for fast training (fast-DiT style).

    python -m diffusion_transformer.extract_latents data.root=/datasets/imagenet/train \\
        vae=/models/sd-vae-ft-ema out=/datasets/imagenet256_latents image_size=256

Writes the latents of every image and its horizontal flip into ``out`` as safetensors shards and
a ``manifest.json`` (``diffusion_transformer.latents``); rerun the same command to finish a killed
job. Train on the result with ``data=imagenet_latents data.root=<out>``.
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig

from common.cli import hydra_main

# What makes sense for each number this command reads (common.errors.check_values).
CHECKS = {
    "image_size": "int>=8",
    "batch_size": "int>=1",
    "shard_size": "int>=1",
    "num_workers": "int>=0",
    "scale": ">0",
}


def refuse_ignored_keys(cfg: DictConfig) -> None:
    """Refuse settings that a finished extraction in ``out`` (its ``manifest.json``) would ignore
    (issue 28): its shards are kept, so a new ``image_size`` or ``scale`` would only be recorded."""
    manifest = Path(cfg.out) / "manifest.json"
    if not manifest.is_file():
        return
    done = json.loads(manifest.read_text())
    for key in ("image_size", "scale"):
        if key in done and done[key] != cfg[key]:
            raise ValueError(
                f"{key}={cfg[key]} is ignored because {cfg.out} already holds latents made with "
                f"{key}={done[key]} (manifest.json), which a rerun keeps; drop it, or pick a new "
                "out="
            )


@hydra_main("extract_latents", checks=CHECKS)
def main(cfg: DictConfig) -> None:
    from diffusion_transformer.latents import extract

    refuse_ignored_keys(cfg)
    extract(cfg)


if __name__ == "__main__":
    main()
