"""The learned target mode of GANgealing (thesis Sec. 4.3.1, Eqs. 4.3-4.4; Sec. 4.3.2).

The target latent is not a free vector: ``c = w_bar + sum_i alpha_i d_i`` (Eq. 4.4) over the
top-N principal directions ``d_i`` of W space, and only the coefficients ``alpha`` are learned,
which keeps ``G(c)`` on the image manifold. With K clusters (Eq. 4.6) there are K coefficient
vectors.

Per-sample targets come from style mixing (Eq. 4.3): the first ``cutoff`` W+ layers, which set
pose, receive the target latent, the remaining layers receive the sample's own ``w`` (appearance).
During the first steps of training the target latent is ``lerp(c, w, psi)`` with ``psi`` annealed
from 1 (target = the input image itself, the identity warp is optimal) to 0 (target = the mode),
so the Spatial Transformer starts from an easy task.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

_Z_BLOCK = 256


@torch.no_grad()
def fit_w_pca(
    mapping: Callable[[torch.Tensor], torch.Tensor],
    style_dim: int,
    num_components: int,
    num_samples: int = 100_000,
    batch_size: int = 4096,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and top principal directions of W = mapping(z), z ~ N(0, I) (Eq. 4.4's w_bar, d_i).

    Streams ``num_samples`` latents in batches and accumulates the mean and the covariance in
    float64, so the result is the exact PCA of those samples at any sample count (the official code
    fits 1M latents with an incremental PCA). Returns ``mean [1, D]`` and unit-norm
    ``directions [N, D]`` ordered by decreasing variance, signs fixed so each direction's largest
    entry is positive.
    """
    if not 1 <= num_components <= style_dim:
        raise ValueError(
            f"num_components={num_components} must lie in [1, {style_dim}] (the W dimension); "
            "the thesis uses N = 1 by default (Table 4.3)"
        )
    total = torch.zeros(style_dim, dtype=torch.float64, device=device)
    outer = torch.zeros(style_dim, style_dim, dtype=torch.float64, device=device)
    pending: list[torch.Tensor] = []
    seen = 0

    def consume() -> None:
        w = mapping(torch.cat(pending).to(device)).to(torch.float64)
        total.add_(w.sum(0))
        outer.add_(w.T @ w)
        pending.clear()

    # z comes in fixed blocks, each from its own seed, so the samples (and the PCA) do not
    # depend on batch_size.
    for block, start in enumerate(range(0, num_samples, _Z_BLOCK)):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + block)
        pending.append(torch.randn(min(_Z_BLOCK, num_samples - start), style_dim, generator=gen))
        seen += pending[-1].shape[0]
        if sum(p.shape[0] for p in pending) >= batch_size:
            consume()
    if pending:
        consume()
    mean = total / seen
    cov = outer / seen - torch.outer(mean, mean)
    eigvals, eigvecs = torch.linalg.eigh(cov)
    order = torch.argsort(eigvals, descending=True)[:num_components]
    directions = eigvecs[:, order].T
    flip = directions.gather(1, directions.abs().argmax(1, keepdim=True)).sign()
    directions = directions * flip
    return mean[None].float().cpu(), directions.float().cpu()


def psi_schedule(step: int, anneal_steps: int, kind: str = "cosine") -> float:
    """Truncation toward the mode, annealed from 1 at step 0 to 0 at ``anneal_steps``."""
    if anneal_steps <= 0 or step >= anneal_steps:
        return 0.0
    frac = step / anneal_steps
    if kind == "linear":
        return 1.0 - frac
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * frac))
    raise ValueError(f"unknown psi annealing {kind!r}: use 'linear' or 'cosine'")


class TargetMode(nn.Module):
    """K learned target latents c_k = w_bar + alpha_k . d (Eq. 4.4) and the mixed targets (Eq. 4.3).

    ``w_mean [1, D]`` and ``directions [N, D]`` are buffers (saved with the checkpoint, fixed after
    :meth:`assign_pca`); ``coefficients [K, N]`` are the learned alphas, zero at the start so every
    mode begins at the mean latent (or at K-means++ centres through :meth:`assign_modes`).
    """

    def __init__(
        self, style_dim: int, num_components: int = 1, num_modes: int = 1, cutoff: int = 5
    ) -> None:
        super().__init__()
        if num_modes < 1:
            raise ValueError(f"num_modes={num_modes}: need at least one target mode (K >= 1)")
        self.style_dim, self.num_modes, self.cutoff = style_dim, num_modes, cutoff
        self.register_buffer("w_mean", torch.zeros(1, style_dim))
        self.register_buffer("directions", torch.zeros(num_components, style_dim))
        self.coefficients = nn.Parameter(torch.zeros(num_modes, num_components))

    @torch.no_grad()
    def assign_pca(self, mean: torch.Tensor, directions: torch.Tensor) -> None:
        if directions.shape != self.directions.shape or mean.shape != self.w_mean.shape:
            raise ValueError(
                f"PCA of shape mean {tuple(mean.shape)}, directions {tuple(directions.shape)} "
                f"does not fit this target ({tuple(self.w_mean.shape)}, "
                f"{tuple(self.directions.shape)}): fit it with num_components="
                f"{self.directions.shape[0]} on a generator with style_dim={self.style_dim}"
            )
        self.w_mean.copy_(mean)
        self.directions.copy_(directions)

    @torch.no_grad()
    def assign_modes(self, latents: torch.Tensor) -> None:
        """Set the coefficients to the projection of ``latents [K, D]`` on the directions."""
        self.coefficients.copy_((latents - self.w_mean) @ self.directions.T)

    def modes(self) -> torch.Tensor:
        """The K target latents c_k [K, D] (Eq. 4.4)."""
        return self.w_mean + self.coefficients @ self.directions

    def mix(self, w: torch.Tensor, psi: float, num_layers: int) -> torch.Tensor:
        """W+ targets [B, K, num_layers, D] for sample latents ``w [B, D]`` (Eq. 4.3).

        Layers ``< cutoff`` get ``lerp(c_k, w, psi)``, the rest ``w``.
        """
        if not 0 < self.cutoff <= num_layers:
            raise ValueError(
                f"mixing cutoff {self.cutoff} must lie in [1, {num_layers}] (the generator's W+ "
                "layers); the thesis uses 5 (Table 4.3)"
            )
        b, k = w.shape[0], self.num_modes
        c = self.modes()[None].expand(b, k, -1)
        own = w[:, None].expand(b, k, -1)
        pose = torch.lerp(c, own, psi)
        return torch.cat(
            [
                pose[:, :, None].expand(b, k, self.cutoff, -1),
                own[:, :, None].expand(b, k, num_layers - self.cutoff, -1),
            ],
            dim=2,
        )


def target_from_state(state: dict[str, torch.Tensor], cutoff: int) -> TargetMode:
    """The :class:`TargetMode` of a saved state (``w_mean``, ``directions``, ``coefficients``),
    its sizes read from the tensors."""
    num_modes, num_components = state["coefficients"].shape
    target = TargetMode(
        state["w_mean"].shape[1], num_components, num_modes=num_modes, cutoff=int(cutoff)
    )
    target.load_state_dict(state, strict=True)
    return target
