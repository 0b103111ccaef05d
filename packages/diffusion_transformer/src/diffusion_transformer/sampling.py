"""Sampling from a DiT: DDPM (ancestral, 250 steps by default), DDIM, or a rectified-flow ODE,
with classifier-free guidance computed in one batched forward pass (Sec. 2.3.1); ``sample`` draws
images from a checkpoint (ours or an official one) into ``grid.png`` and ``samples.npz``."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from common.data.images import save_grid, save_npz, to_uint8
from common.devices import pick_device
from common.diffusion import RectifiedFlow, create_diffusion
from common.diffusion.guidance import guided_prediction
from common.diffusion.progress import Progress
from common.errors import require_positive_int
from diffusion_transformer.checkpoints import load_dit, read_record
from diffusion_transformer.diffusers_io import is_diffusers_folder
from diffusion_transformer.models import DIT_CONFIGS, DiT, DiT_models
from diffusion_transformer.vae import build_vae

SAMPLERS = ("ddpm", "ddim", "euler", "heun")
_FLOW_KEYS = ("time_sampling", "logit_mean", "logit_std", "time_scale", "shift")
_DDPM_KEYS = ("noise_schedule", "predict_xstart", "predict_v", "sigma_small", "diffusion_steps")


def build_training_process(cfg: Mapping[str, Any], learn_sigma: bool):
    """The process the loss is computed with: full-length Gaussian diffusion or rectified flow."""
    if cfg.get("objective", "ddpm") == "flow":
        return RectifiedFlow(**{k: cfg[k] for k in _FLOW_KEYS if k in cfg})
    if cfg.get("objective", "ddpm") != "ddpm":
        raise ValueError(f"unknown objective {cfg['objective']!r}: use 'ddpm' or 'flow'")
    kwargs = {k: cfg[k] for k in (*_DDPM_KEYS, "use_kl", "rescale_learned_sigmas") if k in cfg}
    return create_diffusion("", learn_sigma=learn_sigma, **kwargs)


def default_sampler(cfg: Mapping[str, Any]) -> str:
    return cfg.get("sampler") or ("euler" if cfg.get("objective") == "flow" else "ddpm")


@torch.no_grad()
def sample_latents(
    model: torch.nn.Module,
    diffusion_cfg: Mapping[str, Any],
    labels: torch.Tensor,
    noise: torch.Tensor,
    sampler: str | None = None,
    steps: int | None = None,
    cfg_scale: float = 1.0,
    clip_denoised: bool = False,
    progress: Progress = False,
    autocast_dtype: torch.dtype | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Run a sampler from ``noise`` for ``labels``; returns the model-space samples (latents).

    ``sampler``: ``ddpm`` (respaced ancestral sampling, 250 steps by default, as for the thesis'
    FID-50K), ``ddim`` (eta = 0, deterministic), ``euler``/``heun`` (flow models).
    ``cfg_scale > 1`` guides with the null class; the model must have been trained with label
    dropout. ``autocast_dtype`` (e.g. ``torch.bfloat16`` on GPUs) runs the network in reduced
    precision while the sampler arithmetic stays in float32.
    """
    if not math.isfinite(float(cfg_scale)) or cfg_scale < 0:
        raise ValueError(f"cfg_scale={cfg_scale} is not a guidance scale; pass one >= 0 (1 = off)")
    if steps is not None:
        require_positive_int("steps", steps, allow_none=True)
    sampler = sampler or default_sampler(diffusion_cfg)
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}")
    is_flow = diffusion_cfg.get("objective", "ddpm") == "flow"
    if is_flow != (sampler in ("euler", "heun")):
        kind = "flow" if is_flow else "diffusion (ddpm)"
        valid = "euler or heun" if is_flow else "ddpm or ddim"
        raise ValueError(f"sampler {sampler!r} does not apply to a {kind} model: use {valid}")
    if cfg_scale != 1.0 and model.y_embedder.embedding_table.num_embeddings <= model.num_classes:
        raise ValueError(
            "classifier-free guidance needs the null class, but this model was trained without "
            "label dropout (class_dropout_prob=0): sample with cfg_scale=1"
        )
    device = noise.device
    autocast = (
        torch.autocast(device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )

    def model_fn(x, t, y):
        with autocast:
            if cfg_scale == 1.0:
                out = model(x, t, y)
            else:
                out = guided_prediction(
                    model, x, t, y, model.num_classes, cfg_scale, guided_channels=model.cfg_channels
                )
        return out.float()

    kwargs = {"y": labels}
    if is_flow:
        flow = RectifiedFlow(**{k: diffusion_cfg[k] for k in _FLOW_KEYS if k in diffusion_cfg})
        return flow.sample_loop(
            model_fn,
            tuple(noise.shape),
            noise=noise,
            model_kwargs=kwargs,
            progress=progress,
            num_steps=steps or 50,
            method=sampler,
        )
    steps = steps or (250 if sampler == "ddpm" else 50)
    respacing = str(steps) if sampler == "ddpm" else f"ddim{steps}"
    dkw = {k: diffusion_cfg[k] for k in _DDPM_KEYS if k in diffusion_cfg}
    diffusion = create_diffusion(respacing, learn_sigma=model.learn_sigma, **dkw)
    loop = diffusion.p_sample_loop if sampler == "ddpm" else diffusion.ddim_sample_loop
    return loop(
        model_fn,
        tuple(noise.shape),
        noise=noise,
        clip_denoised=clip_denoised,
        model_kwargs=kwargs,
        device=device,
        progress=progress,
        generator=generator,
    )


# What an official checkpoint was trained with (Sec. 2.4).
OFFICIAL_DIFFUSION = {"objective": "ddpm", "noise_schedule": "linear", "diffusion_steps": 1000}


@dataclass
class SampleResult:
    grid: Path
    npz: Path
    images: np.ndarray
    labels: np.ndarray


def choose_labels(labels, num_samples: int, num_classes: int, generator: torch.Generator):
    """Given labels cycled to ``num_samples``, or uniformly random classes when none are given."""
    if labels is None or len(labels) == 0:
        return torch.randint(0, num_classes, (num_samples,), generator=generator)
    labels = torch.as_tensor(list(labels), dtype=torch.long)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got {labels.tolist()}")
    return labels.repeat(math.ceil(num_samples / len(labels)))[:num_samples]


def refuse_ignored_keys(cfg: Mapping[str, Any], model: DiT, meta: dict[str, Any]) -> None:
    """Refuse what the file ``cfg.ckpt`` (loaded as ``model``, ``meta``) would ignore or contradict
    (issue 28): ``use_ema=false`` for a file with one set of weights, an architecture key that
    disagrees with the architecture the file records, ``vae=`` for a pixel-space model,
    ``cfg_channels=`` without guidance and labels beyond ``num_samples`` (``sample`` and
    ``export_diffusers``)."""
    name = Path(str(cfg["ckpt"])).name
    if cfg.get("cfg_channels") is not None and cfg.get("cfg_scale", 1.0) == 1.0:
        raise ValueError(
            f"cfg_channels={cfg['cfg_channels']} is ignored because cfg_scale=1 samples without "
            "guidance; drop it, or guide with cfg_scale>1 (e.g. cfg_scale=4.0)"
        )
    labels = list(cfg.get("labels") or [])
    if len(labels) > cfg.get("num_samples", len(labels)):
        raise ValueError(
            f"labels=[{','.join(map(str, labels))}] is ignored past its first "
            f"{cfg['num_samples']} classes because num_samples={cfg['num_samples']}; drop it, or "
            f"set num_samples={len(labels)}"
        )
    diffusers = is_diffusers_folder(cfg["ckpt"])
    lightning = bool(meta) and not read_record(cfg["ckpt"])  # ours, not an ema.pt: raw and EMA
    both = not diffusers and ("official_args" in meta or lightning)
    if cfg.get("use_ema") is False and not both:
        raise ValueError(
            f"use_ema=false is ignored because {name} holds one set of weights (the EMA ones for "
            "our ema.pt and exports); drop it, or pass the run's .ckpt, which holds both"
        )
    if cfg.get("vae") and model.in_channels != 4 and not (meta.get("vae") or {}).get("path"):
        raise ValueError(
            f"vae={cfg['vae']} is ignored because {name} generates {model.in_channels}-channel "
            "images in pixel space, with no VAE; drop it"
        )
    recorded = model.config if diffusers else (meta.get("model") or {})
    given: dict[str, dict[str, Any]] = {}
    if cfg.get("arch"):
        if cfg["arch"] not in DiT_models:
            raise ValueError(
                f"unknown DiT model {cfg['arch']!r}; valid names: {', '.join(DiT_models)}"
            )
        size, patch = cfg["arch"][len("DiT-") :].split("/")
        given["arch"] = {**DIT_CONFIGS[size]._asdict(), "patch_size": int(patch)}
    if cfg.get("image_size") is not None:
        latent = recorded.get("in_channels", 4) == 4  # as load_dit reads image_size
        given["image_size"] = {"input_size": cfg["image_size"] // (8 if latent else 1)}
    for key in ("num_classes", "num_heads"):
        if cfg.get(key) is not None:
            given[key] = {key: cfg[key]}
    for key, implied in given.items():
        wrong = [f"{f}={recorded[f]}" for f, v in implied.items() if recorded.get(f, v) != v]
        if wrong:
            raise ValueError(
                f"{key}={cfg[key]} disagrees with the architecture {name} records "
                f"({', '.join(wrong)}); drop it: a file that records its architecture needs no "
                "architecture key"
            )


def evaluate_command(npz: Path, model, meta: dict[str, Any]) -> str:
    """The ``evaluate`` command for ``npz``: the run's reference (else the image folder it trained
    on), metrics and Inception weights when the checkpoint records them, the digits space for a
    digits-shaped model, else ImageNet's FID setting."""
    from common.metrics.evaluate import NO_REFERENCE

    spec = meta.get("evaluate") or {}
    reference, metrics = spec.get("reference") or spec.get("images"), spec.get("metrics")
    weights = spec.get("inception_weights") or "<weights-inception-2015-12-05-6726825d.pth>"
    digits = (model.in_channels, model.input_size, model.num_classes) == (1, 8, 10)
    if reference is None and digits:
        reference, metrics = "digits", ["fd_digits", "acc_digits"]
    command = f"python -m diffusion_transformer.evaluate samples={npz}"
    metrics = metrics or ["fid", "is", "precision", "recall"]
    if not all(m in NO_REFERENCE for m in metrics):  # evaluate refuses an unused reference
        command += f" reference={reference or '<reference .npz or image folder>'}"
    command += f" metrics.names=[{','.join(metrics)}]"
    if not all(m.endswith("_digits") for m in metrics):
        command += f" metrics.inception_weights={weights}"
    return command


def sample(cfg: DictConfig) -> SampleResult:
    """The job of ``python -m diffusion_transformer.sample`` (``conf/sample.yaml``): ``grid.png``
    and ``samples.npz`` (``arr_0`` uint8 [N, H, W, 3], ADM's evaluator format, and ``labels``)."""
    if not cfg.get("ckpt"):
        raise ValueError("set ckpt=<path to a .ckpt, ema.pt or official DiT .pt file>")
    device = pick_device(cfg.device)
    model, meta = load_dit(
        cfg.ckpt,
        arch=cfg.arch,
        image_size=cfg.image_size,
        num_classes=cfg.num_classes,
        use_ema=cfg.use_ema,
        cfg_channels=cfg.cfg_channels,
        num_heads=cfg.num_heads,
    )
    refuse_ignored_keys(cfg, model, meta)
    model.to(device)
    diffusion_cfg = dict(meta.get("diffusion") or OFFICIAL_DIFFUSION)
    steps = cfg.sampling_steps
    if steps is None and cfg.sampler in (None, default_sampler(diffusion_cfg)):
        steps = diffusion_cfg.get("sampling_steps")  # the run's own sampler and steps
    vae_cfg = meta.get("vae")
    if cfg.vae:
        vae_cfg = {**(vae_cfg or {}), "path": cfg.vae}
    vae = build_vae(vae_cfg)
    if vae is None and model.in_channels == 4:
        raise FileNotFoundError(
            "this checkpoint generates 4-channel VAE latents: set vae=<local folder of the "
            "Stable Diffusion VAE (sd-vae-ft-ema or sd-vae-ft-mse)> to decode them"
        )
    if vae is not None:
        vae.to(device)
    precision = cfg.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]

    generator = torch.Generator().manual_seed(cfg.seed)
    labels = choose_labels(cfg.labels, cfg.num_samples, model.num_classes, generator)
    images = []
    batches = range(0, cfg.num_samples, cfg.batch_size)
    for start in tqdm(batches, desc="batches", disable=not cfg.progress):
        y = labels[start : start + cfg.batch_size].to(device)
        noise = torch.randn(
            len(y), model.in_channels, model.input_size, model.input_size, generator=generator
        ).to(device)
        step_gen = torch.Generator(device=device).manual_seed(cfg.seed * 100_003 + start)
        x = sample_latents(
            model,
            diffusion_cfg,
            y,
            noise,
            sampler=cfg.sampler,
            steps=steps,
            cfg_scale=cfg.cfg_scale,
            clip_denoised=vae is None,
            autocast_dtype=autocast,
            generator=step_gen,
        )
        if vae is not None:
            x = vae.decode(x)
        images.append(to_uint8(x))
    images_np = np.concatenate(images)
    out_dir = Path(cfg.out)
    grid = save_grid(images_np[: cfg.grid_size], out_dir / "grid.png")
    npz = save_npz(images_np, out_dir / "samples.npz", labels=labels.numpy())
    print(f"sample grid : {grid}")
    print(f"samples npz : {npz} ({len(images_np)} images)")
    print(f"next        : {evaluate_command(npz, model, meta)}")
    return SampleResult(grid, npz, images_np, labels.numpy())
