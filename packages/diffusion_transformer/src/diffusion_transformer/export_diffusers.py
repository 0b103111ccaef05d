"""Export a DiT to diffusers: ``python -m diffusion_transformer.export_diffusers ckpt=...``.

Writes ``transformer/`` (``DiTTransformer2DModel``) and ``scheduler/`` (``DDIMScheduler`` over the
training process) and, for a latent-space model with its VAE folder (``vae=``, default: the one
the run trained with), ``vae/`` and ``model_index.json``: a ``DiTPipeline`` that loads offline::

    from diffusion_transformer.diffusers_io import load_diffusers_pipeline
    pipe = load_diffusers_pipeline("<out>")   # DiTPipeline.from_pretrained + DiT's timestep shift

(a pixel-space model has no VAE, hence no pipeline: ``load_diffusers_transformer("<out>")``; the
command prints the line for the model at hand).

The folder loads back here as well: ``python -m diffusion_transformer.sample ckpt=<out>``.
"""

from __future__ import annotations

from omegaconf import DictConfig

from common.cli import hydra_main

# What makes sense for each number this command reads (common.errors.check_values).
CHECKS = {
    "num_heads": "int>=1|null",
}


@hydra_main("export_diffusers", checks=CHECKS)
def main(cfg: DictConfig) -> None:
    from diffusion_transformer.checkpoints import load_dit
    from diffusion_transformer.diffusers_io import export_diffusers, load_snippet
    from diffusion_transformer.sampling import refuse_ignored_keys

    if not cfg.get("ckpt"):
        raise ValueError("set ckpt=<path to a .ckpt, ema.pt or official DiT .pt file>")
    dit, meta = load_dit(cfg.ckpt, arch=cfg.arch, use_ema=cfg.use_ema, num_heads=cfg.num_heads)
    refuse_ignored_keys(cfg, dit, meta)
    vae = cfg.vae or (meta.get("vae") or {}).get("path")
    out = export_diffusers(dit, cfg.out, meta["diffusion"], vae)
    kind = "DiTPipeline (transformer, scheduler, vae)" if vae else "transformer + scheduler"
    print(f"diffusers folder : {out} ({kind})")
    print(f'next             : python -c "{load_snippet(out, pipeline=bool(vae))}"')
    if vae and dit.num_classes != 1000:
        print(
            f"note: DiTPipeline's guidance uses class 1000 as the null class; this model has "
            f"{dit.num_classes} classes (null class {dit.num_classes}): call it with "
            "guidance_scale=1, or sample with diffusion_transformer.sample"
        )


if __name__ == "__main__":
    main()
