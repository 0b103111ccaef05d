"""GANgealing as a LightningModule (thesis Sec. 4.3, Eqs. 4.3-4.6).

Every step draws ``w = mapping(z)``, renders the unaligned input ``x = G(w)`` and its per-sample
targets ``y_k = G(mix(c_k, w))`` (style mixing with the learned modes, ``target.py``), warps ``x``
with each Spatial Transformer ``T_k`` and minimises

    min_k l(T_k(x), y_k) + lambda_TV L_TV(T_k) + lambda_I L_I(T_k)          (Eqs. 4.5, 4.6)

over the transformers and the mode coefficients jointly (the generator is frozen). With
``flips=true`` the mirrored input is one more candidate of the min, as in the official code.
The target latent is annealed from the sample's own ``w`` (psi = 1) to the mode (psi = 0) over
``psi_anneal_steps``; the learning rate is constant during the anneal, then follows a cosine to 0.

The transformers' EMA (``stn_ema``) is what congealing, propagation and PCK use. ``export()``
gives the congealer file: the EMA transformers with the config that builds them, the modes, the
generator that renders them and its fingerprint.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from common.checkpoint import plain_container
from common.errors import NonFiniteError
from common.training import step_seed
from common.training.ema import EMA
from gangealing.align.congealer import Congealer
from gangealing.align.flow import identity_loss, total_variation_huber
from gangealing.align.official_stn import OfficialComposedSTN
from gangealing.align.sampling import BilinearDownsample
from gangealing.align.stn import STNOutput
from gangealing.align.target import TargetMode, fit_w_pca, psi_schedule
from gangealing.align.transformers import build_transformers, head_outputs
from gangealing.stylegan2.networks import Generator, load_generator
from gangealing.training.losses import perceptual_loss


def generator_fingerprint(generator: nn.Module) -> str:
    """SHA-256 of the generator's weights: ties a trained STN to the GAN that supervised it."""
    digest = hashlib.sha256()
    for name, tensor in sorted(generator.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class _Steps(IterableDataset):
    """An endless stream of step indices: GANgealing's data come from the generator itself."""

    def __iter__(self) -> Iterator[int]:
        step = 0
        while True:
            yield step
            step += 1


class _AntialiasedResize(nn.Module):
    """Generated images to the alignment resolution (antialiased bilinear; the small-trunk path
    and generator sizes that are not a multiple of the resolution)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] == self.size:
            return images
        size = (self.size, self.size)
        return F.interpolate(images, size=size, mode="bilinear", antialias=True)


class GangealingModule(L.LightningModule):
    """GANgealing training (module docstring). ``model`` is the Spatial Transformer's config
    (``conf/model/stn``, built by :func:`gangealing.align.transformers.build_transformers`);
    every other argument is the key of ``conf/train.yaml`` with the same name."""

    def __init__(
        self,
        generator: str,
        model: dict[str, Any],
        resolution: int,
        num_modes: int,
        num_components: int,
        cutoff: int,
        pca_samples: int,
        loss: dict[str, Any],
        tv_weight: float,
        identity_weight: float,
        flips: bool,
        padding_mode: str,
        sample_from_full_res: bool,
        psi_anneal_steps: int,
        psi_anneal: str,
        optim: dict[str, float],
        batch_size: int,
        ema_decay: float,
        seed: int,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.generator: Generator = load_generator(generator).eval().requires_grad_(False)
        self.fingerprint = generator_fingerprint(self.generator)
        if resolution > self.generator.size:
            warnings.warn(
                f"resolution={resolution} exceeds the {self.generator.size}px output of "
                f"{generator}: generated pairs are upsampled, which costs compute and adds no "
                f"detail; set resolution={self.generator.size} or lower (the thesis aligns at or "
                "below the GAN's resolution)",
                stacklevel=2,
            )
        self.target = TargetMode(
            self.generator.style_dim, num_components, num_modes=num_modes, cutoff=cutoff
        )
        self.register_buffer("target_initialised", torch.tensor(False))
        if model.get("supersize", 0) is None:  # official real_size = the generator's size
            g = self.generator.size
            model = {**model, "supersize": g if g % resolution == 0 else resolution}
        self.stns = build_transformers(model)
        if self.stns.num_heads != num_modes:
            raise ValueError(
                f"model.num_heads={self.stns.num_heads} but num_modes={num_modes}: leave "
                "model.num_heads at ${num_modes}"
            )
        official = isinstance(self.stns, OfficialComposedSTN)
        if sample_from_full_res and not official:
            raise ValueError(
                "sample_from_full_res=true needs the released transformer (model=stn/paper); "
                "set sample_from_full_res=false with model=stn/small"
            )
        if official and self.generator.size % resolution == 0:
            factor = self.generator.size // resolution  # official resize_fake2stn
            self.pair_resize: nn.Module = (
                BilinearDownsample(factor, 3) if factor > 1 else nn.Identity()
            )
        else:
            self.pair_resize = _AntialiasedResize(resolution)
        self.stn_ema = EMA(self.stns, decay=ema_decay)
        loss = {k: v for k, v in loss.items() if v is not None}
        self.distance = perceptual_loss(loss.pop("name"), **loss)

    # ------------------------------------------------------------------ setup
    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Steps(), batch_size=None)

    def on_fit_start(self) -> None:
        if bool(self.target_initialised):
            return
        hp = self.hparams
        mean, directions = fit_w_pca(
            self.generator.get_latent,
            self.generator.style_dim,
            hp.num_components,
            num_samples=hp.pca_samples,
            seed=hp.seed,
            device=self.device,
        )
        self.target.assign_pca(mean.to(self.device), directions.to(self.device))
        if hp.num_modes > 1:
            self.target.assign_modes(self._kmeans_plusplus_latents(hp.num_modes).to(self.device))
        self.target_initialised.fill_(True)

    @torch.no_grad()
    def _kmeans_plusplus_latents(self, k: int, pool: int = 4096) -> torch.Tensor:
        """K-means++ seeding of the K modes (Sec. 4.3.2) on the PCA coefficients of sampled w."""
        gen = torch.Generator().manual_seed(self.hparams.seed + 1)
        z = torch.randn(pool, self.generator.style_dim, generator=gen).to(self.device)
        w = self.generator.get_latent(z)
        coords = (w - self.target.w_mean) @ self.target.directions.T
        chosen = [int(torch.randint(pool, (1,), generator=gen))]
        for _ in range(k - 1):
            d2 = torch.cdist(coords, coords[chosen]).min(1).values.square()
            chosen.append(int(torch.multinomial(d2.cpu() + 1e-12, 1, generator=gen)))
        return w[chosen]

    def configure_optimizers(self):
        hp = self.hparams
        opt = torch.optim.Adam(
            [
                {"params": self.stns.parameters(), "lr": hp.optim["lr"]},
                {"params": self.target.parameters(), "lr": hp.optim["mode_lr"]},
            ],
            betas=(0.9, 0.999),
        )
        total = self.trainer.max_steps if self.trainer.max_steps > 0 else None
        anneal = hp.psi_anneal_steps

        def factor(step: int) -> float:
            if total is None or step < anneal or total <= anneal:
                return 1.0
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - anneal) / (total - anneal))))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------ training
    def pairs(
        self, batch_size: int, psi: float, with_source: bool = False
    ) -> tuple[torch.Tensor, ...]:
        """GAN-supervised pairs (Eq. 4.3): inputs x [B, 3, R, R] and targets y [B, K, 3, R, R]
        (official ``sample_gan_supervised_pairs``); ``with_source`` adds the generated inputs at
        full resolution, which ``sample_from_full_res`` warps instead of x.

        Gradients reach the mode coefficients through y; the generator stays frozen.
        """
        g = self.generator
        z = torch.randn(batch_size, g.style_dim, device=self.device)
        with torch.no_grad():
            w = g.get_latent(z)
            full, _ = g([w], input_is_latent=True)
        plus = self.target.mix(w, psi, g.n_latent)
        y, _ = g([plus.flatten(0, 1)], input_is_latent=True)
        y = self.pair_resize(y).unflatten(0, (batch_size, self.hparams.num_modes))
        x = self.pair_resize(full)
        return (x, y, full) if with_source else (x, y)

    def warp_modes(
        self, stns: nn.Module, x: torch.Tensor, source: torch.Tensor | None = None
    ) -> list[STNOutput]:
        """T_k(x) for every mode k: one pass of the K-head ``paper`` T, or each small T_k."""
        if isinstance(stns, OfficialComposedSTN):
            out = stns(x, source, padding_mode=self.hparams.padding_mode)
            return head_outputs(out, stns.num_heads)
        return [stn(x) for stn in stns]

    def alignment_losses(
        self, stns: nn.Module, x: torch.Tensor, y: torch.Tensor, source: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Eq. 4.5 for every candidate (mode k, and mirrored input with flips), min over them
        (Eq. 4.6; official ``gangealing_cluster_loss``). Returns the scalar ``loss`` and its parts,
        plus ``assignment`` [B] (the winning candidate: ``k``, or ``K + k`` for the mirror)."""
        hp = self.hparams
        inputs = [(x, source)]
        if hp.flips:
            inputs.append((x.flip(-1), None if source is None else source.flip(-1)))
        distances, regularisers, parts = [], [], []
        for image, pixels in inputs:
            for k, out in enumerate(self.warp_modes(stns, image, pixels)):
                d = self.distance(out.image, y[:, k]).reshape(-1)
                if out.flow is not None:
                    tv = total_variation_huber(out.flow, reduction="none")
                    ident = identity_loss(out.flow, reduction="none")
                else:
                    tv = ident = torch.zeros_like(d)
                distances.append(d)
                regularisers.append(hp.tv_weight * tv + hp.identity_weight * ident)
                parts.append(torch.stack([tv, ident], 1))
        distance = torch.stack(distances, 1)
        assignment = distance.detach().argmin(1)
        rows = torch.arange(x.shape[0], device=x.device)
        chosen = distance[rows, assignment]
        reg = torch.stack(regularisers, 1)[rows, assignment]
        tv, ident = torch.stack(parts, 1)[rows, assignment].unbind(1)
        return {
            "loss": (chosen + reg).mean(),
            "distance": chosen.mean(),
            "tv": tv.mean(),
            "identity": ident.mean(),
            "assignment": assignment,
        }

    def training_step(self, batch, batch_idx: int):
        torch.manual_seed(step_seed(self.hparams.seed, self.global_step, self.global_rank))
        psi = psi_schedule(self.global_step, self.hparams.psi_anneal_steps, self.hparams.psi_anneal)
        if self.hparams.sample_from_full_res:
            x, y, source = self.pairs(self.hparams.batch_size, psi, with_source=True)
        else:
            (x, y), source = self.pairs(self.hparams.batch_size, psi), None
        try:
            out = self.alignment_losses(self.stns, x, y, source)
        except NonFiniteError as err:  # a NaN grid (stn.grid_sample): T diverged in training
            hint = NonFiniteError(f"{err}; lower optim.lr and optim.mode_lr")  # the CLI's one line
            raise hint.with_traceback(err.__traceback__) from None  # shows the innermost cause
        self.log_dict(
            {f"train/{k}": out[k] for k in ("loss", "distance", "tv", "identity")}, prog_bar=True
        )
        self.log("train/psi", psi)
        if self.hparams.num_modes > 1:
            counts = torch.bincount(out["assignment"] % self.hparams.num_modes)
            self.log("train/largest_cluster_share", counts.max() / out["assignment"].numel())
        return out["loss"]

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        self.stn_ema.update(self.stns)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["hyper_parameters"] = plain_container(dict(self.hparams))
        checkpoint["generator_fingerprint"] = self.fingerprint

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("generator_fingerprint")
        if saved is not None and saved != self.fingerprint:
            raise ValueError(
                f"this GANgealing checkpoint was trained with another generator (fingerprint "
                f"{saved}, got {self.fingerprint} from {self.hparams.generator}): pass the "
                "generator= file it was trained with, or start a new run without resume="
            )

    def congealer(self) -> Congealer:
        """What congealing real images needs: the EMA transformers, the target modes and the
        generator that renders them, with the test settings of this training run."""
        hp = self.hparams
        settings = {"padding_mode": hp.padding_mode, "iters": 1, "flips": bool(hp.flips)}
        congealer = Congealer(
            self.stn_ema.module, hp.resolution, settings, target=self.target,
            generator=self.generator, model=plain_container(dict(hp.model)),
        )  # fmt: skip
        congealer.generator_info = {
            "path": str(hp.generator), "fingerprint": self.fingerprint, "size": self.generator.size,
        }  # fmt: skip
        return congealer

    def export(self) -> dict[str, Any]:
        """``congealer.pt`` (``gangealing.align.congealer``)."""
        return self.congealer().export()
