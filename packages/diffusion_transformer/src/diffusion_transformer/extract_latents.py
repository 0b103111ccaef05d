"""Encode an image folder into VAE latent shards once, for fast training (fast-DiT style).

    python -m diffusion_transformer.extract_latents data.root=/datasets/imagenet/train \\
        vae=/models/sd-vae-ft-ema out=/datasets/imagenet256_latents image_size=256

Writes the latents of every image and its horizontal flip into ``out`` as safetensors shards and
a ``manifest.json`` (``diffusion_transformer.latents``); rerun the same command to finish a killed
job (``settings.json`` records its settings; a rerun with others is refused). Train on the result
with ``data=imagenet_latents data.root=<out>``.
"""

from __future__ import annotations

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


@hydra_main("extract_latents", checks=CHECKS)
def main(cfg: DictConfig) -> None:
    from diffusion_transformer.latents import extract

    extract(cfg)


if __name__ == "__main__":
    main()
