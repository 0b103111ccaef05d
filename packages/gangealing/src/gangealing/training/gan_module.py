"""StyleGAN2 training as a LightningModule: the recipe of Karras et al. 2020 [187] (thesis Ch. 4).

GANgealing (thesis Sec. 4.3) needs a StyleGAN2 generator G of the image category to align; this
module trains one from images, with the published recipe (config F, as in rosinality's
``stylegan2-pytorch``):

- non-saturating logistic loss: ``L_D = softplus(D(G(z))) + softplus(-D(x))``,
  ``L_G = softplus(-D(G(z)))``;
- lazy R1 on reals, ``gamma / 2 * E ||grad_x D(x)||^2``, every ``d_reg_every`` steps, scaled by
  ``d_reg_every``;
- lazy path-length regularisation every ``g_reg_every`` steps, weight 2, on a batch shrunk by
  ``path_batch_shrink``: ``(||J_w^T y||_2 - a)^2`` with ``y ~ N(0, I) / sqrt(HW)`` and ``a`` the
  running mean path length (decay 0.01, a buffer saved in checkpoints);
- Adam (lr 0.002, betas (0, 0.99)) with the lazy-regularisation correction ``c = k / (k + 1)``:
  lr ``* c`` and betas ``** c`` (:func:`lazy_adam_hparams`);
- style mixing with probability 0.9 (two z, a random crossover layer in W+);
- an EMA of G (decay ``0.5 ** (32 / 10_000)``: a half-life of 10k images at batch 32), used for
  samples and exported as ``g_ema``;
- optional DiffAugment (:mod:`gangealing.stylegan2.diffaug`) on everything D sees.

G and D alternate, so the module uses manual optimisation. ``trainer.global_step`` counts
training iterations (one G step each): the D step and the regularisation steps do not advance it.
Several devices: ``strategy=ddp strategy.find_unused_parameters=true`` (G and D receive gradients
in separate backward passes); the path-length mean is averaged over ranks.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from common.checkpoint import build_model, plain_container
from common.data.images import save_grid, to_uint8
from common.training import step_seed
from common.training.ema import EMA
from gangealing.stylegan2.diffaug import diff_augment, parse_policy
from gangealing.stylegan2.networks import Discriminator, Generator, save_generator

DEFAULT_EMA_DECAY = 0.5 ** (32 / (10 * 1000))
"""rosinality's G EMA decay: half-life of 10k images at batch size 32."""

REGULARIZATION = (
    "r1_gamma", "d_reg_every", "g_reg_every", "path_weight", "path_batch_shrink", "path_decay",
)  # fmt: skip
"""The settings of ``regularization`` (``conf/train_gan.yaml`` holds the recipe's values)."""


def lazy_adam_hparams(
    lr: float, betas: tuple[float, float], reg_every: int | None
) -> tuple[float, tuple[float, float]]:
    """Adam settings corrected for lazy regularisation (StyleGAN2 [187], Appendix B).

    A regularisation step every ``k`` main steps means ``k + 1`` optimizer steps per ``k``
    iterations; ``c = k / (k + 1)`` keeps the effective lr and momentum: ``lr * c``,
    ``(beta1 ** c, beta2 ** c)``. No correction when ``reg_every`` is 0 or None.
    """
    if not reg_every:
        return lr, (betas[0], betas[1])
    c = reg_every / (reg_every + 1)
    return lr * c, (betas[0] ** c, betas[1] ** c)


def d_logistic_loss(real_pred: Tensor, fake_pred: Tensor) -> Tensor:
    """Non-saturating logistic loss of D: ``softplus(-D(x)) + softplus(D(G(z)))``."""
    return F.softplus(-real_pred).mean() + F.softplus(fake_pred).mean()


def g_nonsaturating_loss(fake_pred: Tensor) -> Tensor:
    """Non-saturating generator loss ``softplus(-D(G(z)))``."""
    return F.softplus(-fake_pred).mean()


def r1_penalty(real_pred: Tensor, real: Tensor) -> Tensor:
    """R1: ``E ||grad_x D(x)||^2`` over reals (``real`` must require grad)."""
    (grad,) = torch.autograd.grad(real_pred.sum(), real, create_graph=True)
    return grad.pow(2).reshape(grad.shape[0], -1).sum(1).mean()


def path_length_penalty(
    fake: Tensor, latents: Tensor, mean_path_length: Tensor, decay: float = 0.01
) -> tuple[Tensor, Tensor, Tensor]:
    """StyleGAN2 path-length penalty ``(||J_w^T y|| - a)^2``, ``y ~ N(0, I) / sqrt(H W)``.

    ``latents`` is the W+ code ``[N, n_latent, D]`` that produced ``fake``; the Jacobian-vector
    product is summed over the W+ layers per layer and averaged over them, as in rosinality.
    Returns ``(penalty, updated running mean a, per-sample path lengths)``.
    """
    y = torch.randn_like(fake) / math.sqrt(fake.shape[2] * fake.shape[3])
    (grad,) = torch.autograd.grad((fake * y).sum(), latents, create_graph=True)
    lengths = grad.pow(2).sum(2).mean(1).sqrt()
    path_mean = mean_path_length + decay * (lengths.mean() - mean_path_length)
    return (lengths - path_mean).pow(2).mean(), path_mean.detach(), lengths


class StyleGAN2Module(L.LightningModule):
    """Trains a StyleGAN2 ``generator`` G and ``discriminator`` D, and keeps ``ema`` (G_ema).

    ``model``: G's config (``conf/model/stylegan2``: the ``_target_`` and arguments of
    :class:`~gangealing.stylegan2.networks.Generator`), built by ``hydra.utils.instantiate``; D
    mirrors its resolution and widths. ``optim``: ``lr``, ``betas``. ``regularization``: the keys
    of :data:`REGULARIZATION`. ``augment``: a DiffAugment policy such as
    ``"color,translation,cutout"`` (or a list of names), or None. ``ema_decay`` None:
    :data:`DEFAULT_EMA_DECAY`.
    Every ``sample_every`` steps a grid of G_ema samples for fixed z is written to
    ``<trainer.default_root_dir>/samples/``; every ``export_every`` steps the rosinality-format
    ``stylegan2.pt`` there is refreshed (:meth:`export`).
    """

    def __init__(
        self,
        model: Mapping[str, Any],
        optim: Mapping[str, Any],
        regularization: Mapping[str, float],
        mixing: float,
        augment: str | Sequence[str] | None,
        ema_decay: float | None,
        num_samples: int,
        sample_every: int,
        export_every: int,
        seed: int,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        # A checkpoint's hyper-parameters build this: only the generator class may be named.
        self.generator: Generator = build_model(model, ["gangealing.stylegan2.networks.Generator"])
        g = self.generator
        self.discriminator = Discriminator(g.size, g.channel_multiplier, channels=g.channels)
        self.ema = EMA(self.generator, DEFAULT_EMA_DECAY if ema_decay is None else ema_decay)
        self.reg = dict(regularization)
        if set(self.reg) != set(REGULARIZATION):
            raise ValueError(
                f"regularization has the keys {sorted(self.reg)}; it needs exactly "
                f"{', '.join(REGULARIZATION)}"
            )
        self.augment = parse_policy(augment)
        self.mixing, self.seed = mixing, seed
        self.register_buffer("mean_path_length", torch.zeros(()))
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer(
            "sample_z", torch.randn(num_samples, self.generator.style_dim, generator=gen)
        )

    @property
    def g_ema(self) -> Generator:
        """The EMA generator (used for samples and exported as ``g_ema``)."""
        return self.ema.module

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        lr, betas = self.hparams.optim["lr"], tuple(self.hparams.optim["betas"])
        g_lr, g_betas = lazy_adam_hparams(lr, betas, self.reg["g_reg_every"])
        d_lr, d_betas = lazy_adam_hparams(lr, betas, self.reg["d_reg_every"])
        return [
            torch.optim.Adam(self.generator.parameters(), lr=g_lr, betas=g_betas),
            torch.optim.Adam(self.discriminator.parameters(), lr=d_lr, betas=d_betas),
        ]

    # ------------------------------------------------------------------ sampling
    def mixing_noise(self, batch: int) -> tuple[list[Tensor], int | None]:
        """One z per image, or two with probability ``mixing`` and a random crossover layer."""
        z = torch.randn(batch, self.generator.style_dim, device=self.device)
        if self.mixing > 0 and torch.rand(()) < self.mixing:
            z2 = torch.randn(batch, self.generator.style_dim, device=self.device)
            inject = int(torch.randint(1, self.generator.n_latent, ()))
            return [z, z2], inject
        return [z], None

    def generate(self, batch: int, return_latents: bool = False) -> tuple[Tensor, Tensor | None]:
        """Images from G for fresh (possibly mixed) z."""
        styles, inject = self.mixing_noise(batch)
        return self.generator(styles, return_latents=return_latents, inject_index=inject)

    def discriminate(self, images: Tensor) -> Tensor:
        return self.discriminator(diff_augment(images, self.augment))

    @torch.no_grad()
    def sample(self, z: Tensor | None = None, truncation: float = 1.0) -> Tensor:
        """G_ema images for ``z`` (default: the fixed ``sample_z``), stored noise, no mixing."""
        z = self.sample_z if z is None else z.to(self.sample_z.device)
        mean = self.g_ema.mean_latent(4096) if truncation < 1 else None
        images, _ = self.g_ema(
            [z], truncation=truncation, truncation_latent=mean, randomize_noise=False
        )
        return images

    # ------------------------------------------------------------------ training
    @contextlib.contextmanager
    def _uncounted(self, optimizer: Any) -> Iterator[None]:
        """Step ``optimizer`` without advancing ``trainer.global_step``.

        In manual optimisation every ``LightningOptimizer.step`` advances the step counter
        (Lightning issue #17958), so one iteration of D, R1, G and path-length steps would count
        up to four. Only the main G step counts; ``max_steps`` and ``*_every`` are iterations.
        """
        before = getattr(optimizer, "_on_before_step", None)
        after = getattr(optimizer, "_on_after_step", None)
        if before is None or after is None:
            yield
            return
        optimizer._on_before_step = lambda: None
        optimizer._on_after_step = lambda: None
        try:
            yield
        finally:
            optimizer._on_before_step, optimizer._on_after_step = before, after

    def training_step(self, batch: Tensor, batch_idx: int) -> dict[str, Tensor]:
        """One StyleGAN2 iteration: D step, lazy R1, G step, lazy path length, EMA update."""
        step = self.global_step
        torch.manual_seed(step_seed(self.seed, step, self.global_rank))
        g_opt, d_opt = self.optimizers()
        real = batch
        n = real.shape[0]
        logs: dict[str, Tensor] = {}

        # D: non-saturating logistic loss on reals and (detached) fakes
        self.toggle_optimizer(d_opt)
        with torch.no_grad():
            fake, _ = self.generate(n)
        real_pred, fake_pred = self.discriminate(real), self.discriminate(fake)
        d_loss = d_logistic_loss(real_pred, fake_pred)
        with self._uncounted(d_opt):
            d_opt.zero_grad(set_to_none=True)
            self.manual_backward(d_loss)
            d_opt.step()
        logs.update(d_loss=d_loss.detach(), real_score=real_pred.detach().mean(),
                    fake_score=fake_pred.detach().mean())  # fmt: skip

        # lazy R1 on (augmented) reals, gradient w.r.t. the un-augmented reals
        every = int(self.reg["d_reg_every"])
        if every and step % every == 0:
            real_r1 = real.detach().requires_grad_(True)
            r1 = r1_penalty(self.discriminate(real_r1), real_r1)
            with self._uncounted(d_opt):
                d_opt.zero_grad(set_to_none=True)
                self.manual_backward(self.reg["r1_gamma"] / 2 * r1 * every)
                d_opt.step()
            logs["r1"] = r1.detach()
        self.untoggle_optimizer(d_opt)

        # G: non-saturating loss through D
        self.toggle_optimizer(g_opt)
        fake, _ = self.generate(n)
        g_loss = g_nonsaturating_loss(self.discriminate(fake))
        g_opt.zero_grad(set_to_none=True)
        self.manual_backward(g_loss)
        g_opt.step()
        logs["g_loss"] = g_loss.detach()

        # lazy path-length regularisation on a shrunk batch
        every = int(self.reg["g_reg_every"])
        if every and step % every == 0:
            path_batch = max(1, n // int(self.reg["path_batch_shrink"]))
            fake, latents = self.generate(path_batch, return_latents=True)
            penalty, path_mean, lengths = path_length_penalty(
                fake, latents, self.mean_path_length, self.reg["path_decay"]
            )
            with self._uncounted(g_opt):
                g_opt.zero_grad(set_to_none=True)
                self.manual_backward(self.reg["path_weight"] * every * penalty)
                g_opt.step()
            self.mean_path_length.copy_(self.trainer.strategy.reduce(path_mean, reduce_op="mean"))
            logs.update(path_penalty=penalty.detach(), path_length=lengths.detach().mean())
        self.untoggle_optimizer(g_opt)

        self.ema.update(self.generator)
        logs["mean_path_length"] = self.mean_path_length.clone()
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, prog_bar=False)
        self.log("train/g_loss_bar", logs["g_loss"], prog_bar=True, logger=False)
        return logs

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = self.global_step
        every = self.hparams.sample_every
        if every and step % every == 0 and self.trainer.is_global_zero:
            path = self.save_samples(self.output_dir / "samples" / f"step{step:07d}.png")
            for logger in self.loggers:
                if hasattr(logger, "log_image"):  # W&B
                    logger.log_image(key="samples", images=[str(path)], step=step)
        every = self.hparams.export_every
        if every and step % every == 0 and self.trainer.is_global_zero:
            self.export(self.output_dir / "stylegan2.pt")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["hyper_parameters"] = plain_container(dict(self.hparams))

    # ------------------------------------------------------------------ outputs
    @property
    def output_dir(self) -> Path:
        root = self.trainer.default_root_dir if self._trainer is not None else "."
        return Path(root)

    def save_samples(self, path: str | Path) -> Path:
        """Write a PNG grid of G_ema samples for the fixed z."""
        return save_grid(to_uint8(self.sample()), path)

    @torch.no_grad()
    def export(self, path: str | Path) -> Path:
        """Write ``{'g_ema', 'g', 'd', 'latent_avg', 'args'}`` in rosinality's format.

        ``latent_avg`` ``[style_dim]`` is the mean of 4096 mapped z (a fixed seed), the
        truncation centre;
        GANgealing loads the file with ``generator=<path>`` (``gangealing.stylegan2.networks``).
        """
        g = torch.Generator().manual_seed(self.seed)
        z = torch.randn(4096, self.g_ema.style_dim, generator=g).to(self.sample_z.device)
        latent_avg = self.g_ema.get_latent(z).mean(0)
        save_generator(path, self.g_ema, self.generator, self.discriminator, latent_avg)
        return Path(path)
