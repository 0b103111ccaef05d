"""Classic pixel-level congealing, a baseline for PCK-Transfer (thesis Secs. 4.2, 4.4.2).

Least-squares congealing (Learned-Miller 2006; Cox et al. 2008) aligns a set of images jointly
without a learned target: each image ``i`` gets a similarity transform with rotation ``a_i``,
log-scale ``l_i`` and shift ``t_i``, and all transforms minimise the sum of squared differences
between every warped image and the mean of the warped images, recomputed at every step:

    min_{T_1..T_N}  sum_i || I_i o T_i - mean_j (I_j o T_j) ||^2 .

We optimise by gradient descent (Adam) on blurred images, coarse to fine. The transforms are
reverse sampling warps in normalised coordinates (``F.affine_grid``, ``align_corners=False``):
``T_i(u) = exp(l_i) R(a_i) u + t_i`` maps a point ``u`` of the congealed frame to image ``i``.
The parameters are centred (zero mean over the images) at every step, which removes the common
transform the objective cannot see and forbids the trivial solution of all images zooming into
one flat patch together. Sec. 4.2 ("Joint Image Set Alignment") describes Congealing; Table 4.3
contrasts a single shared target with GANgealing's per-input targets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from gangealing.align.stn import grid_sample, size_hw


@dataclass
class CongealingResult:
    """Output of :func:`congeal`.

    ``thetas [N, 2, 3]`` reverse warps, ``grids [N, H, W, 2]`` the matching sampling grids,
    ``congealed [N, C, H, W]`` the warped (unblurred) images, ``losses`` per step, and the
    centred ``angles``, ``log_scales`` ``[N]`` and ``shifts [N, 2]`` (normalised units).
    """

    thetas: torch.Tensor
    grids: torch.Tensor
    congealed: torch.Tensor
    losses: list[float] = field(default_factory=list)
    angles: torch.Tensor | None = None
    log_scales: torch.Tensor | None = None
    shifts: torch.Tensor | None = None


def similarity_thetas(
    angles: torch.Tensor, log_scales: torch.Tensor, shifts: torch.Tensor
) -> torch.Tensor:
    """``[N, 2, 3]`` reverse warps ``u -> exp(l) R(a) u + t`` (normalised coordinates)."""
    scale = torch.exp(log_scales)
    cos, sin = scale * torch.cos(angles), scale * torch.sin(angles)
    row0 = torch.stack([cos, -sin, shifts[:, 0]], dim=-1)
    row1 = torch.stack([sin, cos, shifts[:, 1]], dim=-1)
    return torch.stack([row0, row1], dim=1)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with reflection padding (identity for ``sigma <= 0``)."""
    if sigma <= 0:
        return images
    radius = max(1, int(math.ceil(3 * sigma)))
    radius = min(radius, images.shape[-1] - 1, images.shape[-2] - 1)
    x = torch.arange(-radius, radius + 1, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    horizontal = kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    vertical = kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    out = F.pad(images, (radius, radius, 0, 0), mode="reflect")
    out = F.conv2d(out, horizontal, groups=channels)
    out = F.pad(out, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(out, vertical, groups=channels)


def _warp(images: torch.Tensor, thetas: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(thetas, list(images.shape), align_corners=False)
    return grid_sample(images, grid, "reflection")


def pixel_variance(images: torch.Tensor, margin: float = 0.0) -> float:
    """Mean over pixels of the variance across images (the congealing objective per pixel);
    ``margin`` crops that fraction of the size from each border first."""
    if margin > 0:
        h, w = images.shape[-2:]
        dy, dx = int(round(margin * h)), int(round(margin * w))
        images = images[..., dy : h - dy, dx : w - dx]
    return float(images.var(dim=0, unbiased=False).mean())


def congeal(
    images: torch.Tensor,
    steps_per_stage: int = 100,
    blur_sigmas: Sequence[float] = (2.0, 1.0, 0.5),
    lr: float = 0.02,
    loss_margin: float = 0.1,
) -> CongealingResult:
    """Least-squares congealing of ``images [N, C, H, W]`` by similarity transforms.

    Runs ``steps_per_stage`` Adam steps for each Gaussian blur width in ``blur_sigmas``
    (pixels at 32 px, scaled with the image size: coarse to fine). The loss is the mean squared
    difference to the current mean image over the central region (``loss_margin`` of the size is
    ignored at each border, where reflection padding shows). Deterministic (no randomness).
    """
    if images.ndim != 4 or images.shape[0] < 2:
        raise ValueError(f"congeal needs images [N >= 2, C, H, W], got {tuple(images.shape)}")
    images = images.detach().float()
    n, _, h, w = images.shape
    angles = torch.zeros(n, requires_grad=True)
    log_scales = torch.zeros(n, requires_grad=True)
    shifts = torch.zeros(n, 2, requires_grad=True)
    optimizer = torch.optim.Adam([angles, log_scales, shifts], lr=lr)
    dy, dx = int(round(loss_margin * h)), int(round(loss_margin * w))

    def centred() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return angles - angles.mean(), log_scales - log_scales.mean(), shifts - shifts.mean(0)

    losses: list[float] = []
    for sigma in blur_sigmas:
        blurred = gaussian_blur(images, sigma * min(h, w) / 32)
        for _ in range(steps_per_stage):
            warped = _warp(blurred, similarity_thetas(*centred()))[..., dy : h - dy, dx : w - dx]
            loss = (warped - warped.mean(dim=0, keepdim=True)).pow(2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    with torch.no_grad():
        angle, log_scale, shift = centred()
        thetas = similarity_thetas(angle, log_scale, shift)
        grids = F.affine_grid(thetas, list(images.shape), align_corners=False)
        congealed = grid_sample(images, grids, "reflection")
    return CongealingResult(thetas, grids, congealed, losses, angle, log_scale, shift)


# ---------------------------------------------------------------------------- keypoint transfer


def _normalizer(size: int | Sequence[int]) -> torch.Tensor:
    height, width = size_hw(size)
    return torch.tensor(
        [[2.0 / width, 0.0, 1.0 / width - 1.0], [0.0, 2.0 / height, 1.0 / height - 1.0], [0, 0, 1]],
        dtype=torch.float64,
    )


def theta_from_grid(grid: torch.Tensor) -> torch.Tensor:
    """Least-squares affine ``[N, 2, 3]`` of dense reverse grids ``[N, H, W, 2]`` (exact for
    grids made by ``F.affine_grid`` with ``align_corners=False``)."""
    n, h, w, _ = grid.shape
    identity = torch.eye(2, 3, dtype=torch.float64).expand(n, 2, 3)
    base = F.affine_grid(identity, [n, 1, h, w], align_corners=False).reshape(n, -1, 2)
    design = torch.cat([base, torch.ones_like(base[..., :1])], dim=-1)
    solution = torch.linalg.lstsq(design, grid.double().reshape(n, -1, 2)).solution
    return solution.transpose(1, 2)


def _as_matrix(grid: torch.Tensor) -> torch.Tensor:
    theta = theta_from_grid(grid) if grid.ndim == 4 else grid.double()
    if theta.shape[-2:] != (2, 3):
        raise ValueError(
            f"expected affine warps [N, 2, 3] or dense grids [N, H, W, 2], got {tuple(grid.shape)}"
        )
    bottom = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand(*theta.shape[:-2], 1, 3)
    return torch.cat([theta, bottom], dim=-2)


def transfer_keypoints_via_congealing(
    points_a: torch.Tensor,
    grid_a: torch.Tensor,
    grid_b: torch.Tensor,
    size_a: int | Sequence[int] | None = None,
    size_b: int | Sequence[int] | None = None,
) -> torch.Tensor:
    """Transfer pixel keypoints ``[N, K, 2]`` from images A to images B through congealed space.

    ``grid_a``/``grid_b`` are the reverse warps of A and B: affine ``thetas [N, 2, 3]`` or
    dense ``F.affine_grid`` grids ``[N, H, W, 2]`` (their affine is recovered exactly). A point
    of A is mapped forward into the congealed frame with the analytic inverse of A's warp, then
    into B with B's warp: ``p_B = N_B^-1 T_B T_A^-1 N_A p_A`` where ``N`` maps pixels to
    normalised coordinates. ``size_a``/``size_b`` are image sizes ``H`` or ``(H, W)`` (default:
    the dense grid's size; ``size_b`` defaults to ``size_a``).
    """
    if size_a is None:
        if grid_a.ndim != 4:
            raise ValueError("pass size_a (the image size) when the warps are [N, 2, 3] thetas")
        size_a = tuple(grid_a.shape[1:3])
    size_b = size_a if size_b is None else size_b
    matrix = (
        torch.linalg.inv(_normalizer(size_b))
        @ _as_matrix(grid_b)
        @ torch.linalg.inv(_as_matrix(grid_a))
        @ _normalizer(size_a)
    )
    points = torch.as_tensor(points_a).double()
    out = points @ matrix[..., :2, :2].transpose(-1, -2) + matrix[..., None, :2, 2]
    return out.to(torch.as_tensor(points_a).dtype)


def no_alignment_transfer(
    points_a: torch.Tensor,
    size_a: int | Sequence[int] | None = None,
    size_b: int | Sequence[int] | None = None,
) -> torch.Tensor:
    """Identity baseline: a keypoint keeps its pixel position in the other image (rescaled when
    the sizes differ)."""
    points = torch.as_tensor(points_a).clone()
    if size_a is None or size_b is None:
        return points
    (ha, wa), (hb, wb) = size_hw(size_a), size_hw(size_b)
    points[..., 0] = (points[..., 0] + 0.5) * wb / wa - 0.5
    points[..., 1] = (points[..., 1] + 0.5) * hb / ha - 0.5
    return points
