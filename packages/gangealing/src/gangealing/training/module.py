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
writes a congealer file with the EMA transformers, the modes and the configuration needed at test
time, plus the fingerprint of the generator it was trained with.
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
from common.training import step_seed
from common.training.ema import EMA
from gangealing.align.flow import identity_loss, total_variation_huber
from gangealing.align.official_stn import OfficialComposedSTN
from gangealing.align.sampling import BilinearDownsample
from gangealing.align.stn import (
    STNOutput,
)
from gangealing.align.target import TargetMode, fit_w_pca, psi_schedule
from gangealing.align.transformers import (
    build_paper_transformer,
    build_transformer,
    head_outputs,
    paper_supersize,
)
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
    def __init__(
        self,
        generator: str,
        resolution: int = 64,
        transform: str = "paper",
        stn: dict[str, Any] | None = None,
        num_modes: int = 1,
        num_components: int = 1,
        cutoff: int = 5,
        pca_samples: int = 100_000,
        loss: dict[str, Any] | None = None,
        tv_weight: float = 1000.0,
        identity_weight: float = 1.0,
        flips: bool = False,
        psi_anneal_steps: int = 5000,
        psi_anneal: str = "cosine",
        stn_lr: float = 1e-3,
        mode_lr: float = 1e-2,
        batch_size: int = 16,
        ema_decay: float = 0.999,
        seed: int = 0,
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
        stn = dict(stn or {})
        if transform == "paper":
            supersize = paper_supersize(stn, resolution, self.generator.size)
            self.stns = build_paper_transformer(resolution, num_modes, stn, supersize)
        else:
            self.stns = nn.ModuleList(
                build_transformer(transform, resolution, stn) for _ in range(num_modes)
            )
        self.padding_mode = stn.get("padding_mode", "reflection")
        self.sample_from_full_res = bool(stn.get("sample_from_full_res", False))
        if transform == "paper" and self.generator.size % resolution == 0:
            factor = self.generator.size // resolution  # official resize_fake2stn
            self.pair_resize: nn.Module = (
                BilinearDownsample(factor, 3) if factor > 1 else nn.Identity()
            )
        else:
            self.pair_resize = _AntialiasedResize(resolution)
        self.stn_ema = EMA(self.stns, decay=ema_decay)
        loss = {k: v for k, v in (loss or {"name": "lpips"}).items() if v is not None}
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
                {"params": self.stns.parameters(), "lr": hp.stn_lr},
                {"params": self.target.parameters(), "lr": hp.mode_lr},
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
        full resolution, which ``stn.sample_from_full_res`` warps instead of x.

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
            out = stns(x, source, padding_mode=self.padding_mode)
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
        if self.sample_from_full_res:
            x, y, source = self.pairs(self.hparams.batch_size, psi, with_source=True)
        else:
            (x, y), source = self.pairs(self.hparams.batch_size, psi), None
        out = self.alignment_losses(self.stns, x, y, source)
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

    def export(self) -> dict[str, Any]:
        """What congealing real images needs (``congealer.pt``): EMA transformers, modes, config."""
        hp = self.hparams
        return {
            "format": "gangealing-congealer-v1",
            "config": {
                "transform": hp.transform,
                "resolution": hp.resolution,
                "flips": bool(hp.flips),
                "stn": plain_container(dict(hp.stn or {})),
                "num_modes": hp.num_modes,
                "num_components": hp.num_components,
                "cutoff": hp.cutoff,
                "style_dim": self.generator.style_dim,
            },
            "stn": {k: v.detach().cpu() for k, v in self.stn_ema.module.state_dict().items()},
            "target": {k: v.detach().cpu() for k, v in self.target.state_dict().items()},
            "generator": {
                "path": str(hp.generator),
                "fingerprint": self.fingerprint,
                "size": self.generator.size,
            },
        }
