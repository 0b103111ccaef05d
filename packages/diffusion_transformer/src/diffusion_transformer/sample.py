"""Sample images from a DiT checkpoint (ours or an official one).

    python -m diffusion_transformer.sample \\
        ckpt=outputs/diffusion_transformer/train/<run>/checkpoints/last.ckpt
    python -m diffusion_transformer.sample ckpt=DiT-XL-2-256x256.pt vae=/models/sd-vae-ft-ema \\
        cfg_scale=4.0 labels=[207,360,387,974] sampler=ddpm sampling_steps=250

Writes ``grid.png`` and ``samples.npz`` (``arr_0``: uint8 [N, H, W, 3], ADM's evaluator format;
``labels``: the class of each sample) and prints their paths.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from common.cli import hydra_main

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


@hydra_main("sample", checks=CHECKS)
def main(cfg: DictConfig) -> None:
    from diffusion_transformer.sampling import sample

    OmegaConf.resolve(cfg)
    sample(cfg)


if __name__ == "__main__":
    main()
