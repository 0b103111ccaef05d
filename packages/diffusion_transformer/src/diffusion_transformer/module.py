"""The DiT LightningModule: training recipe of thesis Sec. 2.4.

AdamW at a constant 1e-4 with no weight decay, horizontal flips, class dropout 0.1 for guidance,
an EMA of the weights at 0.9999 used for every sample, and the hybrid loss (L_simple for the mean,
the VLB for the learned covariance) or the rectified-flow objective. Every step's randomness
(timesteps, noise, label dropout, flips, VAE posterior samples) is seeded from
``(seed, step, rank)``, so resuming from a checkpoint reproduces the uninterrupted run.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from common.checkpoint import plain_container
from common.diffusion.progress import Progress
from common.nn.flops import count_macs
from common.training import step_seed
from common.training.ema import EMA
from diffusion_transformer.encoders import Encoder, build_encoder
from diffusion_transformer.models import DiT
from diffusion_transformer.sampling import build_training_process, sample_latents
from diffusion_transformer.vae import build_vae

#: Latent shards extracted without their images give REPA's encoder nothing (checked before
#: training too).
REPA_NEEDS_IMAGES = (
    "REPA aligns to an encoder of the training images, and these latent shards hold none; "
    "extract them with extract_latents ... crops=true, train on the images (data=imagenet), or "
    "drop repa="
)


def build_repa_encoder(repa: dict[str, Any], model: DiT, vae) -> Encoder:
    """REPA's frozen encoder (``conf/repa``) for the images of ``model``'s data, checked against
    the model's projectors: one per encoder, of the encoder's width, on as many tokens."""
    if not model.projector_dims:
        raise ValueError(
            "repa.coeff > 0 needs REPA's projectors in the model; choose a repa= option, which "
            "sets model.projector_dims"
        )
    image_size = model.input_size * (1 if vae is None else vae.downsample)
    encoder = build_encoder(
        repa["encoder"], repa.get("weights"), image_size, tokens=model.x_embedder.num_patches
    )
    if list(model.projector_dims) != [encoder.embed_dim]:
        raise ValueError(
            f"model.projector_dims={list(model.projector_dims)} does not fit {repa['encoder']}'s "
            f"{encoder.embed_dim}-wide tokens; set repa.z_dims=[{encoder.embed_dim}]"
        )
    return encoder


class DiTModule(L.LightningModule):
    """Trains ``model`` (a ``DiT``; the ``model`` config group builds it with
    ``diffusion_transformer.models.dit``) on ``diffusion`` (the config's objective)."""

    def __init__(
        self,
        model: DiT,
        diffusion: dict[str, Any],
        optim: dict[str, Any] | None = None,
        ema_decay: float = 0.9999,
        vae: dict[str, Any] | None = None,
        flip: bool = True,
        seed: int = 0,
        compile: bool = False,
        repa: dict[str, Any] | None = None,
        evaluate: dict[str, Any] | None = None,
    ) -> None:
        """``repa`` (``encoder``, ``weights``, ``coeff``; ``conf/repa``) adds REPA's projection
        loss against a frozen encoder's tokens of the same images. ``evaluate`` (``reference``,
        ``images``, ``metrics``, ``inception_weights``) is only recorded in the checkpoints, so
        that ``sample`` prints the ``evaluate`` command that scores this model's samples the way
        its run did."""
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        # The DiT's constructor arguments: checkpoints rebuild it from them (checkpoints.load_dit).
        self.hparams["model"] = model.config
        self.model = model
        self.ema = EMA(self.model, decay=ema_decay)
        self.diffusion_cfg = dict(diffusion)
        self.process = build_training_process(self.diffusion_cfg, self.model.learn_sigma)
        self.optim_cfg = {"lr": 1e-4, "weight_decay": 0.0, "betas": (0.9, 0.999), **(optim or {})}
        self.flip = flip
        self.seed = seed
        # The VAE is frozen and kept out of the state dict (see VAECodec).
        self._vae = build_vae(vae, key="data.vae.path")
        self._compile = compile
        self._train_model: tuple[torch.nn.Module, torch.nn.Module] | None = None
        self._micro_step = 0
        self.repa_coeff = float((repa or {}).get("coeff") or 0.0)
        # Frozen, and kept out of the module tree: no state-dict entries, EMA, optimizer or FSDP.
        self._encoder = (build_repa_encoder(repa, model, self._vae),) if self.repa_coeff else ()

    # ------------------------------------------------------------------ setup
    @property
    def vae(self):
        return self._vae

    @property
    def pixel_space(self) -> bool:
        return self._vae is None

    @property
    def train_model(self) -> torch.nn.Module:
        """The network the loss is computed with: ``self.model``, compiled when ``compile=True``.

        Resolved on first use from the current ``self.model``: a strategy may have replaced it by
        then (FSDP wraps it in place), and a reference taken earlier would bypass the wrapper.
        Kept outside the module tree (in a tuple), so there are no duplicate state-dict entries.
        """
        model = self.model
        if self._train_model is None or self._train_model[0] is not model:
            self._train_model = (model, torch.compile(model) if self._compile else model)
        return self._train_model[1]

    def flops_per_sample(self) -> int:
        """Training flops of one image, for MFU (``common.training.throughput``): 3 x the forward
        pass
        (the backward pass costs twice the forward), in real flops, i.e. 2 per multiply-add of
        ``common.nn.flops.count_macs`` (twice the DiT paper's Gflops, Sec. 2.3.2). Counted on a
        meta-device copy of the network, so it costs no memory and works under any strategy."""
        with torch.device("meta"):
            net = DiT(**self.hparams["model"]).eval()
            x = torch.zeros(1, net.in_channels, net.input_size, net.input_size)
            t = torch.zeros(1)
            y = torch.zeros(1, dtype=torch.long)
            aligned = bool(net.projector_dims) and self.repa_coeff > 0  # projectors train too
        return 3 * 2 * count_macs(net, x, t, y, return_projections=aligned)

    def setup(self, stage: str) -> None:
        self.on_fit_start()

    def on_fit_start(self) -> None:
        for frozen in (self._vae, *self._encoder):
            if frozen is not None:
                frozen.to(self.device)

    def configure_optimizers(self):
        cfg = self.optim_cfg
        return torch.optim.AdamW(
            self.model.parameters(),
            lr=cfg["lr"],
            weight_decay=cfg["weight_decay"],
            betas=tuple(cfg["betas"]),
        )

    # ------------------------------------------------------------------ training
    def _prepare(
        self, x: torch.Tensor, crops: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images, or two-flip latents (with their uint8 ``crops``, for REPA) -> (model-space
        inputs, the images they show in [-1, 1], flipped alike; None without images)."""
        n = x.shape[0]
        if x.ndim == 5:  # precomputed latents [N, 2, C, h, w]: index 1 is the flipped image
            pick = (
                (torch.rand(n, device=x.device) < 0.5).long()
                if self.flip
                else torch.zeros(n, dtype=torch.long, device=x.device)
            )
            if crops is not None:
                crops = crops.float() / 127.5 - 1
                crops = torch.where(pick.bool().view(-1, 1, 1, 1), crops.flip(-1), crops)
            return x[torch.arange(n, device=x.device), pick], crops
        if self.flip:
            flip = (torch.rand(n, device=x.device) < 0.5).view(-1, 1, 1, 1)
            x = torch.where(flip, x.flip(-1), x)
        return (x if self._vae is None else self._vae.encode(x)), x

    def training_step(self, batch, batch_idx: int):
        x, y, *crops = batch  # latent shards extracted with crops=true add them
        micro = self.global_step * self.trainer.accumulate_grad_batches + self._micro_step
        torch.manual_seed(step_seed(self.seed, micro, self.global_rank))
        self._micro_step += 1
        x, images = self._prepare(x, *crops)
        t = self.process.sample_timesteps(x.shape[0], x.device)
        kwargs, zs = {"y": y}, None
        if self._encoder:  # REPA: the encoder's tokens of the very images the DiT denoises
            if images is None:
                raise ValueError(REPA_NEEDS_IMAGES)
            zs, kwargs["return_projections"] = [self._encoder[0].features(images).float()], True
        extra = {} if zs is None else {"zs": zs}
        terms = self.process.training_losses(self.train_model, x, t, kwargs, **extra)
        loss = terms["loss"].mean()
        for name, value in terms.items():  # mse, vb (hybrid loss), cos (LightningDiT), proj
            if name != "loss":
                self.log(f"train/{name}", value.mean())
        if zs is not None:
            loss = loss + self.repa_coeff * terms["proj"].mean()
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        self._micro_step = 0
        self.ema.update(self.model)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Plain containers only: the checkpoint must load with torch.load(weights_only=True).
        checkpoint["hyper_parameters"] = plain_container(dict(self.hparams))

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def generate(
        self,
        labels: torch.Tensor,
        noise: torch.Tensor | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        cfg_scale: float = 1.0,
        cfg_interval: list[float] | None = None,
        use_ema: bool = True,
        progress: Progress = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample images in [-1, 1] for ``labels`` (decoded by the VAE in latent space).

        Defaults: the EMA weights, the config's sampler and ``sampling_steps``; guidance (if
        ``cfg_scale`` is not 1) at every t unless ``cfg_interval`` ([low, high]) is given."""
        model = self.ema.module if use_ema else self.model
        was_training = model.training
        model.eval()
        m = self.model
        if noise is None:
            noise = torch.randn(
                len(labels),
                m.in_channels,
                m.input_size,
                m.input_size,
                device=self.device,
                generator=generator,
            )
        latents = sample_latents(
            model,
            self.diffusion_cfg,
            labels.to(self.device),
            noise.to(self.device),
            sampler=sampler,
            steps=steps or self.diffusion_cfg.get("sampling_steps"),
            cfg_scale=cfg_scale,
            cfg_interval=cfg_interval,
            clip_denoised=self.pixel_space,
            progress=progress,
            generator=generator,
        )
        model.train(was_training)
        return latents if self._vae is None else self._vae.decode(latents)
