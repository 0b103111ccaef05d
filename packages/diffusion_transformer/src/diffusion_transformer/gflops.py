"""Print the forward Gflops of every registered DiT (Table 2.1, Fig. 2.2).

python -m diffusion_transformer.gflops                 # 256px images (32x32x4 latents)
python -m diffusion_transformer.gflops --image-size 512
"""

from __future__ import annotations

import argparse

from common.cli import user_errors
from diffusion_transformer.models import BLOCK_TYPES, DIT_CONFIGS, PATCH_SIZES, dit_flops


def gflops_table(image_size: int = 256, block: str = "adaln_zero") -> list[tuple[str, float]]:
    """``[(name, gflops)]`` for the twelve configs on latents of ``image_size / 8``."""
    if image_size % 8:
        raise ValueError(f"image size {image_size} is not a multiple of the VAE's factor 8")
    rows = []
    for size, (depth, hidden, _heads) in DIT_CONFIGS.items():
        for patch in PATCH_SIZES:
            flops = dit_flops(
                input_size=image_size // 8,
                patch_size=patch,
                hidden_size=hidden,
                depth=depth,
                block=block,
            )
            rows.append((f"DiT-{size}/{patch}", flops["total"] / 1e9))
    return rows


@user_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--block", default="adaln_zero", choices=BLOCK_TYPES)
    args = parser.parse_args(argv)
    for name, gflops in gflops_table(args.image_size, args.block):
        print(f"{name:<10}{gflops:>7.1f}")


if __name__ == "__main__":
    main()
