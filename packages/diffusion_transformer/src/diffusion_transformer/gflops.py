"""Print the forward Gflops of every registered DiT (Table 2.1, Fig. 2.2).

    python -m diffusion_transformer.gflops                   # 256px images (32x32x4 latents)
    python -m diffusion_transformer.gflops image_size=512    # DiT-XL/2  524.6
    python -m diffusion_transformer.gflops block=in_context  # Sec. 2.5's block designs

Gflops are forward multiply-adds per image (``diffusion_transformer.flops``).
"""

from __future__ import annotations

from omegaconf import DictConfig

from common.cli import hydra_main

# What makes sense for each number this command reads (common.errors.check_values).
CHECKS = {"image_size": "int>=8"}


@hydra_main("gflops", checks=CHECKS)
def main(cfg: DictConfig) -> None:
    from diffusion_transformer.models import gflops_table

    for name, gflops in gflops_table(cfg.image_size, cfg.block.name):
        print(f"{name:<10}{gflops:>7.1f}")


if __name__ == "__main__":
    # Through the imported module, so that messages name diffusion_transformer.gflops.
    from diffusion_transformer.gflops import main as _main

    _main()
