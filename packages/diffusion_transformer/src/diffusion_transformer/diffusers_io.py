"""DiT <-> diffusers: export a trained DiT as ``DiTTransformer2DModel`` (+ ``DiTPipeline``) and
import one back, with the same outputs both ways.

Layout (diffusers' ``scripts/convert_dit_to_diffusers.py`` convention): ``x_embedder.proj`` ->
``pos_embed.proj``; per block ``adaLN_modulation.1`` -> ``norm1.linear``, ``attn.qkv`` ->
``attn1.to_q/to_k/to_v``, ``attn.proj`` -> ``attn1.to_out.0``, ``mlp.fc1/fc2`` ->
``ff.net.0.proj``/``ff.net.2``; the shared timestep and label embedders are copied into every
block's ``norm1.emb``; ``final_layer`` -> ``proj_out_1``/``proj_out_2``. The sin-cos position
embedding is recomputed by both sides.

One convention differs: diffusers' ``CombinedTimestepLabelEmbeddings`` builds its sinusoidal
timestep features with ``downscale_freq_shift=1`` (frequencies ``10000^(-i/127)``), while DiT uses
0 (``10000^(-i/128)``, ``common.nn.layers.sinusoidal_embedding``). A plain ``from_pretrained`` of an
exported folder therefore computes slightly different outputs; :func:`use_dit_timestep_convention`
(applied by :func:`load_diffusers_transformer` and :func:`load_diffusers_pipeline`) sets the shift
to 0, after which outputs agree with ours to float32 rounding.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from diffusion_transformer.models import DiT
from diffusion_transformer.vae import vae_folder

# ``from_pretrained`` with no network, and without diffusers' advice to install ``accelerate``
# (printed on every load when ``low_cpu_mem_usage`` is left at its default).
_OFFLINE = {"local_files_only": True, "low_cpu_mem_usage": False}


def load_snippet(out: str | Path, pipeline: bool) -> str:
    """The Python lines that load an ``export_diffusers`` folder (printed by the command)."""
    if pipeline:
        return (
            "from diffusion_transformer.diffusers_io import load_diffusers_pipeline; "
            f"pipe = load_diffusers_pipeline({str(out)!r})"
        )
    return (
        "from diffusion_transformer.diffusers_io import load_diffusers_transformer; "
        f"transformer = load_diffusers_transformer({str(out)!r})"
    )


def diffusers_config(dit: DiT) -> dict[str, Any]:
    """``DiTTransformer2DModel`` constructor arguments of a DiT (adaLN-Zero blocks only)."""
    if dit.block != "adaln_zero":
        raise ValueError(
            f"diffusers' DiTTransformer2DModel has adaLN-Zero blocks only; this DiT uses "
            f"block={dit.block}: export an adaln_zero model"
        )
    extras = [k for k, on in dit.options.items() if on] + (
        ["projectors"] * bool(dit.projector_dims)
    )
    if extras:
        raise ValueError(
            f"diffusers' DiTTransformer2DModel has no {', '.join(extras)}; sample this model with "
            "python -m diffusion_transformer.sample"
        )
    if dit.mlp_ratio != 4.0:
        raise ValueError(f"diffusers' DiT has an MLP ratio of 4; this DiT uses {dit.mlp_ratio}")
    return {
        "num_attention_heads": dit.num_heads,
        "attention_head_dim": dit.hidden_size // dit.num_heads,
        "in_channels": dit.in_channels,
        "out_channels": dit.out_channels,
        "num_layers": dit.depth,
        "sample_size": dit.input_size,
        "patch_size": dit.patch_size,
        "num_embeds_ada_norm": dit.num_classes,
        "norm_eps": 1e-6,
        "norm_elementwise_affine": False,
        "norm_type": "ada_norm_zero",
        "activation_fn": "gelu-approximate",
        "attention_bias": True,
    }


def to_diffusers_state_dict(dit: DiT) -> dict[str, torch.Tensor]:
    """Our DiT state dict in ``DiTTransformer2DModel``'s key layout."""
    sd = {k: v.detach().clone() for k, v in dit.state_dict().items()}
    d = dit.hidden_size
    table = sd["y_embedder.embedding_table.weight"]
    if table.shape[0] == dit.num_classes:  # trained without label dropout: no null-class row
        table = torch.cat([table, table.new_zeros(1, d)])  # diffusers always keeps one
    out = {
        "pos_embed.proj.weight": sd["x_embedder.proj.weight"],
        "pos_embed.proj.bias": sd["x_embedder.proj.bias"],
        "proj_out_1.weight": sd["final_layer.adaLN_modulation.1.weight"],
        "proj_out_1.bias": sd["final_layer.adaLN_modulation.1.bias"],
        "proj_out_2.weight": sd["final_layer.linear.weight"],
        "proj_out_2.bias": sd["final_layer.linear.bias"],
    }
    for i in range(dit.depth):
        ours, theirs = f"blocks.{i}.", f"transformer_blocks.{i}."
        emb = theirs + "norm1.emb."
        for j, name in ((0, "linear_1"), (2, "linear_2")):
            for p in ("weight", "bias"):
                out[f"{emb}timestep_embedder.{name}.{p}"] = sd[f"t_embedder.mlp.{j}.{p}"].clone()
        out[f"{emb}class_embedder.embedding_table.weight"] = table.clone()
        for p in ("weight", "bias"):
            out[f"{theirs}norm1.linear.{p}"] = sd[f"{ours}adaLN_modulation.1.{p}"]
            q, k, v = sd[f"{ours}attn.qkv.{p}"].split(d)
            for name, chunk in (("to_q", q), ("to_k", k), ("to_v", v)):
                out[f"{theirs}attn1.{name}.{p}"] = chunk.clone()
            out[f"{theirs}attn1.to_out.0.{p}"] = sd[f"{ours}attn.proj.{p}"]
            out[f"{theirs}ff.net.0.proj.{p}"] = sd[f"{ours}mlp.fc1.{p}"]
            out[f"{theirs}ff.net.2.{p}"] = sd[f"{ours}mlp.fc2.{p}"]
    return out


def from_diffusers_state_dict(sd: dict[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """A ``DiTTransformer2DModel`` state dict in our (official DiT) key layout. Refuses models
    whose blocks carry different timestep/label embedders: DiT shares one."""
    emb0 = "transformer_blocks.0.norm1.emb."
    out = {
        "x_embedder.proj.weight": sd["pos_embed.proj.weight"],
        "x_embedder.proj.bias": sd["pos_embed.proj.bias"],
        "t_embedder.mlp.0.weight": sd[emb0 + "timestep_embedder.linear_1.weight"],
        "t_embedder.mlp.0.bias": sd[emb0 + "timestep_embedder.linear_1.bias"],
        "t_embedder.mlp.2.weight": sd[emb0 + "timestep_embedder.linear_2.weight"],
        "t_embedder.mlp.2.bias": sd[emb0 + "timestep_embedder.linear_2.bias"],
        "y_embedder.embedding_table.weight": sd[emb0 + "class_embedder.embedding_table.weight"],
        "final_layer.adaLN_modulation.1.weight": sd["proj_out_1.weight"],
        "final_layer.adaLN_modulation.1.bias": sd["proj_out_1.bias"],
        "final_layer.linear.weight": sd["proj_out_2.weight"],
        "final_layer.linear.bias": sd["proj_out_2.bias"],
    }
    for i in range(depth):
        ours, theirs = f"blocks.{i}.", f"transformer_blocks.{i}."
        for key in [k for k in sd if k.startswith(theirs + "norm1.emb.")]:
            if not torch.equal(sd[key], sd[key.replace(theirs, "transformer_blocks.0.", 1)]):
                raise ValueError(
                    f"{key} differs from block 0's: this diffusers DiT has per-block timestep or "
                    "label embedders, which the official DiT layout (one shared embedder) cannot "
                    "hold exactly"
                )
        for p in ("weight", "bias"):
            out[f"{ours}adaLN_modulation.1.{p}"] = sd[f"{theirs}norm1.linear.{p}"]
            out[f"{ours}attn.qkv.{p}"] = torch.cat(
                [sd[f"{theirs}attn1.{n}.{p}"] for n in ("to_q", "to_k", "to_v")]
            )
            out[f"{ours}attn.proj.{p}"] = sd[f"{theirs}attn1.to_out.0.{p}"]
            out[f"{ours}mlp.fc1.{p}"] = sd[f"{theirs}ff.net.0.proj.{p}"]
            out[f"{ours}mlp.fc2.{p}"] = sd[f"{theirs}ff.net.2.{p}"]
    return out


def use_dit_timestep_convention(transformer: Any) -> Any:
    """Set ``downscale_freq_shift=0`` in every block's timestep projection of a diffusers
    ``DiTTransformer2DModel`` (diffusers hard-codes 1; DiT's checkpoints were trained with 0)."""
    for block in transformer.transformer_blocks:
        block.norm1.emb.time_proj.downscale_freq_shift = 0
    return transformer


def to_diffusers(dit: DiT) -> Any:
    """A ``DiTTransformer2DModel`` with ``dit``'s weights and DiT's timestep convention."""
    from diffusers import DiTTransformer2DModel

    transformer = DiTTransformer2DModel(**diffusers_config(dit))
    transformer.load_state_dict(to_diffusers_state_dict(dit), strict=True)
    return use_dit_timestep_convention(transformer.eval())


def from_diffusers(transformer: Any) -> DiT:
    """Our DiT (official key layout) from a diffusers ``DiTTransformer2DModel``."""
    c = transformer.config
    in_channels, out_channels = c.in_channels, c.out_channels or c.in_channels
    if out_channels not in (in_channels, 2 * in_channels):
        raise ValueError(f"out_channels {out_channels} is neither in_channels nor twice it")
    dit = DiT(
        input_size=c.sample_size,
        patch_size=c.patch_size,
        in_channels=in_channels,
        hidden_size=c.num_attention_heads * c.attention_head_dim,
        depth=c.num_layers,
        num_heads=c.num_attention_heads,
        num_classes=c.num_embeds_ada_norm,
        learn_sigma=out_channels == 2 * in_channels,
    )
    sd = from_diffusers_state_dict(transformer.state_dict(), c.num_layers)
    sd["pos_embed"] = dit.pos_embed.detach().clone()  # fixed sin-cos, recomputed by both sides
    dit.load_state_dict(sd, strict=True)
    return dit.eval()


def _scheduler(diffusion: dict[str, Any] | None, pixel_space: bool) -> Any:
    """DDIM scheduler over the training process of ``diffusion`` (Sec. 2.3.1: linear betas
    1e-4..2e-2 over 1000 steps unless configured otherwise)."""
    from diffusers import DDIMScheduler

    diffusion = dict(diffusion or {})
    if diffusion.get("objective", "ddpm") != "ddpm":
        raise ValueError(
            "DiTPipeline samples Gaussian diffusion models; this DiT was trained with the "
            f"{diffusion['objective']} objective: sample it with diffusion_transformer.sample"
        )
    schedule = diffusion.get("noise_schedule", "linear")
    steps = int(diffusion.get("diffusion_steps", 1000))
    scale = 1000 / steps  # ADM's linear schedule scales its endpoints with the step count
    prediction = (
        "sample"
        if diffusion.get("predict_xstart")
        else "v_prediction"
        if diffusion.get("predict_v")
        else "epsilon"
    )
    return DDIMScheduler(
        num_train_timesteps=steps,
        beta_start=scale * 1e-4,
        beta_end=scale * 0.02,
        beta_schedule={"linear": "linear", "cosine": "squaredcos_cap_v2"}[schedule],
        clip_sample=pixel_space,
        set_alpha_to_one=True,
        prediction_type=prediction,
    )


def export_diffusers(
    dit: DiT,
    out: str | Path,
    diffusion: dict[str, Any] | None = None,
    vae: str | Path | None = None,
) -> Path:
    """Write ``out/transformer`` and ``out/scheduler`` (``from_pretrained``-loadable offline);
    with the VAE folder of a latent-space model also ``out/vae`` and ``model_index.json``, a
    complete ``DiTPipeline``. Returns ``out``."""
    from diffusers import AutoencoderKL, DiTPipeline

    out = Path(out)
    transformer = to_diffusers(dit)
    scheduler = _scheduler(diffusion, pixel_space=vae is None)
    if vae is None:
        transformer.save_pretrained(out / "transformer")
        scheduler.save_pretrained(out / "scheduler")
    else:
        vae = vae_folder(vae)  # the error names vae=
        autoencoder = AutoencoderKL.from_pretrained(str(vae), **_OFFLINE)
        DiTPipeline(transformer=transformer, vae=autoencoder, scheduler=scheduler).save_pretrained(
            out
        )
    (out / "dit_convention.json").write_text(
        json.dumps(
            {
                "timestep_downscale_freq_shift": 0,
                "note": "load with diffusion_transformer.diffusers_io.load_diffusers_transformer "
                "or call use_dit_timestep_convention(pipe.transformer) for DiT's outputs",
                "null_class": dit.num_classes,
            },
            indent=2,
        )
    )
    return out


def _transformer_folder(path: Path) -> Path:
    if (path / "transformer" / "config.json").is_file():
        return path / "transformer"
    if (path / "config.json").is_file():
        return path
    raise FileNotFoundError(
        f"{path} is not a diffusers DiT folder (no config.json or transformer/config.json): "
        "pass the folder written by diffusion_transformer.export_diffusers or DiTPipeline"
    )


def is_diffusers_folder(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and any(
        (p / "config.json").is_file() for p in (path, path / "transformer")
    )


def load_diffusers_transformer(path: str | Path) -> Any:
    """``DiTTransformer2DModel.from_pretrained`` (offline) with DiT's timestep convention."""
    from diffusers import DiTTransformer2DModel

    folder = _transformer_folder(Path(path))
    model = DiTTransformer2DModel.from_pretrained(str(folder), **_OFFLINE)
    return use_dit_timestep_convention(model.eval())


def load_diffusers_pipeline(path: str | Path) -> Any:
    """``DiTPipeline.from_pretrained`` (offline) with DiT's timestep convention. A folder with no
    ``model_index.json`` (a pixel-space export: no VAE, so no pipeline) is refused in one line
    that names :func:`load_diffusers_transformer`."""
    from diffusers import DiTPipeline

    if not (Path(path) / "model_index.json").is_file():
        raise FileNotFoundError(
            f"{path} is not a DiTPipeline folder (no model_index.json): a pixel-space export "
            f"has no VAE, hence no pipeline; load it with "
            f"load_diffusers_transformer({str(path)!r}) or sample it with "
            f"python -m diffusion_transformer.sample ckpt={path}"
        )
    pipe = DiTPipeline.from_pretrained(str(path), **_OFFLINE)
    use_dit_timestep_convention(pipe.transformer)
    return pipe


def import_diffusers(path: str | Path) -> DiT:
    """Our DiT from a diffusers folder (a pipeline or a ``transformer`` folder)."""
    return from_diffusers(load_diffusers_transformer(path))


def diffusers_meta(path: str | Path) -> dict[str, Any]:
    """What ``load_dit`` returns as metadata for a diffusers folder: the diffusion process of
    its scheduler and, for a pipeline, its VAE folder and latent scale."""
    path = Path(path)
    meta: dict[str, Any] = {}
    scheduler = path / "scheduler" / "scheduler_config.json"
    if scheduler.is_file():
        s = json.loads(scheduler.read_text())
        meta["diffusion"] = {
            "objective": "ddpm",
            "noise_schedule": "cosine"
            if s.get("beta_schedule") == "squaredcos_cap_v2"
            else "linear",
            "diffusion_steps": int(s.get("num_train_timesteps", 1000)),
            "predict_xstart": s.get("prediction_type") == "sample",
            "predict_v": s.get("prediction_type") == "v_prediction",
        }
    vae = path / "vae" / "config.json"
    if vae.is_file():
        scale = json.loads(vae.read_text()).get("scaling_factor", 0.18215)
        meta["vae"] = {"path": str(vae.parent), "scale": scale}
    return meta
