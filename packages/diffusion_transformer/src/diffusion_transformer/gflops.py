"""Print the forward Gflops of every registered DiT (Table 2.1, Fig. 2.2).

    python -m diffusion_transformer.gflops                   # 256px images (32x32x4 latents)
    python -m diffusion_transformer.gflops image_size=512    # DiT-XL/2  524.6
    python -m diffusion_transformer.gflops block=in_context  # Sec. 2.5's block designs

The former ``--image-size 512`` / ``--block in_context`` spelling still works for one release,
with a deprecation line.
"""

from __future__ import annotations

from omegaconf import DictConfig

from common.cli import hydra_main
from diffusion_transformer.flops import dit_flops
from diffusion_transformer.models import BLOCK_TYPES, DIT_CONFIGS, PATCH_SIZES


def gflops_table(image_size: int = 256, block: str = "adaln_zero") -> list[tuple[str, float]]:
    """``[(name, gflops)]`` for the twelve configs on latents of ``image_size / 8``."""
    if image_size % 8:
        raise ValueError(
            f"image size {image_size} is not a multiple of the VAE's factor 8; pass e.g. "
            "image_size=256 or image_size=512"
        )
    if block not in BLOCK_TYPES:
        raise ValueError(f"unknown block {block!r}; choose one of {', '.join(BLOCK_TYPES)}")
    rows = []
    for size, config in DIT_CONFIGS.items():
        for patch in PATCH_SIZES:
            flops = dit_flops(
                input_size=image_size // 8,
                patch_size=patch,
                hidden_size=config.hidden_size,
                depth=config.depth,
                block=block,
            )
            rows.append((f"DiT-{size}/{patch}", flops["total"] / 1e9))
    return rows


# What makes sense for each number this command reads (common.errors.check_values).
CHECKS = {"image_size": "int>=8"}
LEGACY_FLAGS = {"--image-size": "image_size", "--block": "block"}


@hydra_main("gflops", checks=CHECKS, legacy_flags=LEGACY_FLAGS)
def main(cfg: DictConfig) -> None:
    for name, gflops in gflops_table(cfg.image_size, cfg.block.name):
        print(f"{name:<10}{gflops:>7.1f}")


if __name__ == "__main__":
    # Through the imported module, so that messages name diffusion_transformer.gflops.
    from diffusion_transformer.gflops import main as _main

    _main()
