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
from common.diffusion import (
    Guidance,
    Transport,
    create_diffusion,
    get_named_beta_schedule,
    sample_ode,
    sample_sde,
)
from common.diffusion.progress import Progress, with_progress
from common.errors import require_positive_int
from diffusion_transformer.checkpoints import LATENT_FACTOR, arch_settings, load_dit, read_record
from diffusion_transformer.diffusers_io import is_diffusers_folder
from diffusion_transformer.models import DiT
from diffusion_transformer.vae import build_vae

GAUSSIAN_SAMPLERS = ("ddpm", "ddim", "dpmpp_2m")
TRANSPORT_SAMPLERS = ("euler", "heun", "dopri5", "sde", "sde_heun")
#: Keys of a transport diffusion config that set ``Transport`` arguments (null: the preset's).
_TRANSPORT_KEYS = ("path", "prediction", "time_sampling", "shift", "loss_weight", "cosine_weight")
_DDPM_KEYS = ("noise_schedule", "predict_xstart", "predict_v", "sigma_small", "diffusion_steps")
_SDE_KEYS = {"diffusion_form": "diffusion_form", "last_step": "last_step",
             "last_step_size": "last_step_size"}  # fmt: skip


def build_transport(cfg: Mapping[str, Any]) -> Transport:
    """The ``Transport`` of a ``objective: transport`` diffusion config (``conf/diffusion``)."""
    settings = {k: cfg[k] for k in _TRANSPORT_KEYS if cfg.get(k) is not None}
    return Transport.from_preset(cfg.get("preset") or "rectified_flow", **settings)


def build_training_process(cfg: Mapping[str, Any], learn_sigma: bool):
    """The process the loss is computed with: full-length Gaussian diffusion or a transport."""
    if cfg.get("objective", "ddpm") == "transport":
        return build_transport(cfg)
    if cfg.get("objective", "ddpm") != "ddpm":
        raise ValueError(f"unknown objective {cfg['objective']!r}: use 'ddpm' or 'transport'")
    kwargs = {k: cfg[k] for k in (*_DDPM_KEYS, "use_kl", "rescale_learned_sigmas") if k in cfg}
    return create_diffusion("", learn_sigma=learn_sigma, **kwargs)


def default_sampler(cfg: Mapping[str, Any]) -> str:
    return cfg.get("sampler") or ("euler" if cfg.get("objective") == "transport" else "ddpm")


def check_sampler(diffusion_cfg: Mapping[str, Any], sampler: str) -> str:
    """``sampler`` if it applies to the model of ``diffusion_cfg``, else a ValueError saying which
    do."""
    is_transport = diffusion_cfg.get("objective", "ddpm") == "transport"
    valid = TRANSPORT_SAMPLERS if is_transport else GAUSSIAN_SAMPLERS
    if sampler not in valid:
        kind = "transport (flow)" if is_transport else "diffusion (ddpm)"
        if sampler in (*GAUSSIAN_SAMPLERS, *TRANSPORT_SAMPLERS):
            raise ValueError(
                f"sampler {sampler!r} does not apply to a {kind} model: use {' | '.join(valid)}"
            )
        raise ValueError(f"unknown sampler {sampler!r}: choose one of {', '.join(valid)}")
    return sampler


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
    cfg_interval: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Run a sampler from ``noise`` for ``labels``; returns the model-space samples (latents).

    ``sampler``: ``ddpm`` (respaced ancestral sampling, 250 steps by default, as for the thesis'
    FID-50K), ``ddim`` (eta = 0, deterministic), ``dpmpp_2m`` (DPM-Solver++ 2M, 25 steps) for
    Gaussian diffusion; ``euler``/``heun``
    (fixed steps), ``dopri5`` (adaptive, SiT's ODE), ``sde``/``sde_heun`` (SiT's and REPA's SDE;
    ``diffusion_form``, ``last_step`` from the diffusion config) for transport models.
    ``cfg_scale > 1`` guides with the null class on ``model.cfg_channels`` channels, only where
    ``cfg_interval`` holds t (``common.diffusion.guidance.Guidance``: DDPM measures
    ``timestep / T``, transports their own t). ``autocast_dtype`` (e.g. ``torch.bfloat16`` on GPUs)
    runs the network in reduced precision while the sampler arithmetic stays in float32.
    """
    if steps is not None:
        require_positive_int("steps", steps, allow_none=True)
    sampler = check_sampler(diffusion_cfg, sampler or default_sampler(diffusion_cfg))
    is_transport = diffusion_cfg.get("objective", "ddpm") == "transport"
    guidance = Guidance(cfg_scale, model.num_classes, cfg_interval, model.cfg_channels)
    if cfg_scale != 1.0 and model.y_embedder.embedding_table.num_embeddings <= model.num_classes:
        raise ValueError(
            "classifier-free guidance needs the null class, but this model was trained without "
            "label dropout (class_dropout_prob=0): sample with cfg_scale=1"
        )
    autocast = (
        torch.autocast(noise.device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )

    def network(x, t, y, **kwargs):
        with autocast:
            return model(x, t, y, **kwargs).float()

    kwargs = {"y": labels}
    if is_transport:
        transport = build_transport(diffusion_cfg)
        guide = guidance if cfg_scale != 1.0 else None
        steps = steps or 50
        if sampler.startswith("sde"):
            sde = {v: diffusion_cfg[k] for k, v in _SDE_KEYS.items() if k in diffusion_cfg}
            return sample_sde(
                transport, network, noise, "heun" if sampler == "sde_heun" else "euler", steps,
                model_kwargs=kwargs, guidance=guide, noise_source=generator, progress=progress,
                **sde,
            )  # fmt: skip
        return sample_ode(
            transport, network, noise, method=sampler, num_steps=steps, model_kwargs=kwargs,
            guidance=guide, progress=progress,
        )  # fmt: skip
    steps = steps or (250 if sampler == "ddpm" else 25 if sampler == "dpmpp_2m" else 50)
    respacing = str(steps) if sampler == "ddpm" else f"ddim{steps}"
    dkw = {k: diffusion_cfg[k] for k in _DDPM_KEYS if k in diffusion_cfg}
    diffusion = create_diffusion(respacing, learn_sigma=model.learn_sigma, **dkw)
    total = diffusion_cfg.get("diffusion_steps", 1000)

    def model_fn(x, t, y):
        return guidance(network, x, t, y, at=float(t.flatten()[0]) / total)

    if sampler == "dpmpp_2m":
        return _dpmpp_2m(model_fn, diffusion_cfg, noise, labels, steps, progress)

    loop = diffusion.p_sample_loop if sampler == "ddpm" else diffusion.ddim_sample_loop
    return loop(
        model_fn,
        tuple(noise.shape),
        noise=noise,
        clip_denoised=clip_denoised,
        model_kwargs=kwargs,
        device=noise.device,
        progress=progress,
        generator=generator,
    )


def _dpmpp_2m(model_fn, diffusion_cfg, noise, labels, steps: int, progress: Progress):
    """DPM-Solver++ (2M) through diffusers' ``DPMSolverMultistepScheduler`` over the training
    betas, as ``DiTPipeline``'s documented example: the learned-variance channels are split off
    first (the scheduler's ``learned_range`` branch assumes 3 channels), the guided prediction of
    the first ``C`` channels drives the solver."""
    from diffusers import DPMSolverMultistepScheduler

    total = int(diffusion_cfg.get("diffusion_steps", 1000))
    betas = get_named_beta_schedule(diffusion_cfg.get("noise_schedule", "linear"), total)
    prediction = "epsilon"
    if diffusion_cfg.get("predict_xstart"):
        prediction = "sample"
    elif diffusion_cfg.get("predict_v"):
        prediction = "v_prediction"
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=total, trained_betas=betas.tolist(), prediction_type=prediction,
        algorithm_type="dpmsolver++", solver_order=2,
    )  # fmt: skip
    scheduler.set_timesteps(steps, device=noise.device)
    x, channels = noise, noise.shape[1]
    for t in with_progress(scheduler.timesteps, progress, "dpmpp_2m"):
        batch_t = torch.full((x.shape[0],), int(t), device=x.device)
        out = model_fn(x, batch_t, labels)[:, :channels]
        x = scheduler.step(out, t, x).prev_sample
    return x


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
    for key in ("cfg_channels", "cfg_interval"):
        if cfg.get(key) is not None and cfg.get("cfg_scale", 1.0) == 1.0:
            raise ValueError(
                f"{key}={cfg[key]} is ignored because cfg_scale=1 samples without guidance; drop "
                "it, or guide with cfg_scale>1 (e.g. cfg_scale=4.0)"
            )
    labels = list(cfg.get("labels") or [])
    if len(labels) > cfg.get("num_samples", len(labels)):
        raise ValueError(
            f"labels=[{','.join(map(str, labels))}] is ignored past its first "
            f"{cfg['num_samples']} classes because num_samples={cfg['num_samples']}; drop it, or "
            f"set num_samples={len(labels)}"
        )
    diffusers = is_diffusers_folder(cfg["ckpt"])
    lightning = meta.get("model") is not None and not read_record(cfg["ckpt"])  # our .ckpt
    both = not diffusers and ("official_args" in meta or lightning)
    if cfg.get("use_ema") is False and not both:
        raise ValueError(
            f"use_ema=false is ignored because {name} holds one set of weights (the EMA ones for "
            "our ema.pt and exports); drop it, or pass the run's .ckpt, which holds both"
        )
    if cfg.get("vae") and model.in_channels in (1, 3) and not (meta.get("vae") or {}).get("path"):
        raise ValueError(
            f"vae={cfg['vae']} is ignored because {name} generates {model.in_channels}-channel "
            "images in pixel space, with no VAE; drop it"
        )
    recorded = model.config if diffusers else (meta.get("model") or {})
    given: dict[str, dict[str, Any]] = {}
    if cfg.get("arch"):
        given["arch"] = arch_settings(cfg["arch"])[1]
    if cfg.get("image_size") is not None:
        factor = LATENT_FACTOR.get(recorded.get("in_channels", 4), 1)  # as load_dit reads it
        given["image_size"] = {"input_size": cfg["image_size"] // factor}
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
    diffusion_cfg = dict(meta["diffusion"])
    steps = cfg.sampling_steps
    if steps is None and cfg.sampler in (None, default_sampler(diffusion_cfg)):
        steps = diffusion_cfg.get("sampling_steps")  # the run's own sampler and steps
    vae_cfg = meta.get("vae")
    if cfg.vae:
        vae_cfg = {**(vae_cfg or {}), "path": cfg.vae}
    vae = build_vae(vae_cfg)
    if vae is None and model.in_channels not in (1, 3):
        raise FileNotFoundError(
            f"this checkpoint generates {model.in_channels}-channel VAE latents: set vae=<local "
            "folder of its autoencoder in diffusers' layout (Stable Diffusion's sd-vae-ft-ema or "
            "-mse; VA-VAE with its latents_stats.pt for LightningDiT)> to decode them"
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
            cfg_interval=cfg.cfg_interval,
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
