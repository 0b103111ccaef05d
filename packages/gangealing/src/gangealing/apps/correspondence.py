"""GANgealing applications (thesis Sec. 4.4): propagation, correspondence and dataset filtering.

- Sec. 4.4.1 "Propagation from Congealed Space": a user edits ONE congealed image (the average
  congealed image, ``average.png`` of ``gangealing.congeal``) and the edit is carried to every
  image by its reverse grid G. Points travel with :func:`propagate_keypoints` (sample G at the
  point). Dense edits (RGBA overlays, label maps) are *forward splatted*: every congealed pixel
  sends its value to the image location G points at, shared bilinearly among the 4 neighbouring
  image pixels (:func:`splat`, pure torch ``scatter_add``, the role of the official CUDA splat).
- Sec. 4.4.2 "Direct Image-to-Image Correspondence": ``stn.image_to_image_points`` and
  :func:`dense_correspondence` compose the forward warp of A with the reverse warp of B.
- Sec. 4.4.3 "Automated GAN Dataset Pre-Processing": :func:`flow_smoothness_scores` scores each
  image by the total variation of its residual flow (the official ``flow_scores``);
  :func:`rank_by_smoothness` orders the images, smoothest (most reliably aligned) first.

Holes: where the congealed image is magnified in the image (congealed pixels land more than one
image pixel apart), bilinear splatting alone would leave uncovered pixels. Dense propagation
therefore *supersamples* first: the grid is upsampled bilinearly and the edit bilinearly
(overlays) or by nearest neighbour (labels) by the integer factor that brings neighbouring
splatted samples at most one image pixel apart, which guarantees every image pixel inside the
warped congealed region receives weight. Factor 1 (no resampling) where samples are already
dense, so an identity warp reproduces the edit exactly.

Conventions follow :mod:`gangealing.align.stn`: grids [N, Hc, Wc, 2] normalised
(``align_corners=False``) into the image, so one grid serves any image resolution; pixel centres at
integers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from gangealing.align.flow import total_variation_huber
from gangealing.align.stn import (
    Size,
    identity_grid,
    normalized_to_pixel,
    size_hw,
    transfer_points_from_congealed,
    transfer_points_to_congealed,
)

MIN_WEIGHT = 1e-3
"""Image pixels whose splatted weight is below this count as uncovered (they keep the image)."""

# ----------------------------------------------------------------------------------------------
# Forward splatting (Sec. 4.4.1)
# ----------------------------------------------------------------------------------------------


def splat(
    values: Tensor, grid: Tensor, out_hw: Size, weights: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Forward-splat congealed ``values [N, C, Hc, Wc]`` into images of size ``out_hw``.

    Congealed pixel (i, j) lands at ``grid[:, i, j]`` (normalised image coordinates); its value,
    times its optional ``weights [N, 1, Hc, Wc]``, is added to the 4 neighbouring image pixels with
    bilinear weights. Returns the weighted sums ``accum [N, C, H, W]`` and the summed weights
    ``weight [N, 1, H, W]``; ``accum / weight`` is the splatted mean where ``weight > 0``.
    Locations within 1e-4 px of a pixel centre snap onto it (so the identity grid is exact);
    samples outside the image or with non-finite coordinates are dropped.
    """
    n, c, hc, wc = values.shape
    if grid.shape != (n, hc, wc, 2):
        raise ValueError(
            f"grid must be [N, Hc, Wc, 2] = {(n, hc, wc, 2)} to match values {tuple(values.shape)}"
            f", got {tuple(grid.shape)}"
        )
    h, w = size_hw(out_hw)
    p = normalized_to_pixel(grid.to(values.dtype), (h, w)).reshape(n, -1, 2)
    rounded = p.round()
    p = torch.where((p - rounded).abs() < 1e-4, rounded, p)
    finite = torch.isfinite(p).all(-1)
    p = torch.where(finite.unsqueeze(-1), p, torch.full_like(p, -10.0))
    base = values.new_ones(n, hc * wc) if weights is None else weights.reshape(n, hc * wc)
    base = base * finite
    corner = p.floor()
    frac = p - corner
    flat_values = values.reshape(n, c, hc * wc)
    accum = values.new_zeros(n, c, h * w)
    weight = values.new_zeros(n, 1, h * w)
    for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
        x = corner[..., 0] + dx
        y = corner[..., 1] + dy
        wx = frac[..., 0] if dx else 1 - frac[..., 0]
        wy = frac[..., 1] if dy else 1 - frac[..., 1]
        inside = (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
        wgt = (wx * wy * base * inside).unsqueeze(1)
        index = (y.clamp(0, h - 1) * w + x.clamp(0, w - 1)).long().unsqueeze(1)
        accum.scatter_add_(2, index.expand(-1, c, -1), flat_values * wgt)
        weight.scatter_add_(2, index, wgt)
    return accum.reshape(n, c, h, w), weight.reshape(n, 1, h, w)


def supersample_factor(grid: Tensor, out_hw: Size, max_factor: int = 8) -> int:
    """Smallest integer upsampling of ``grid`` that puts neighbouring samples <= 1 image pixel
    apart (no holes in :func:`splat`), capped at ``max_factor``."""
    p = normalized_to_pixel(grid, size_hw(out_hw))
    steps = [p[:, :, 1:] - p[:, :, :-1], p[:, 1:] - p[:, :-1]]
    spacing = max((s.norm(dim=-1).max().item() for s in steps if s.numel()), default=1.0)
    if not math.isfinite(spacing):
        return 1
    return int(min(max(math.ceil(spacing - 1e-3), 1), max_factor))


def _resample_grid(grid: Tensor, hw: tuple[int, int]) -> Tensor:
    """Bilinearly resample a grid [N, H, W, 2] to ``hw`` (exact for affine grids, inside)."""
    if tuple(grid.shape[1:3]) == hw:
        return grid
    out = F.interpolate(grid.permute(0, 3, 1, 2), size=hw, mode="bilinear", align_corners=False)
    return out.permute(0, 2, 3, 1)


def splat_dense(
    values: Tensor,
    grid: Tensor,
    out_hw: Size,
    mode: str = "bilinear",
    supersample: int | None = None,
    min_weight: float = MIN_WEIGHT,
) -> tuple[Tensor, Tensor]:
    """Hole-free splatting: resample ``grid`` to the edit's size, supersample both (``mode`` for
    the values, ``supersample=None``: :func:`supersample_factor`), then :func:`splat`.

    Returns ``(mean [N, C, H, W], covered [N, 1, H, W] bool)``; ``mean`` is 0 where not covered.
    """
    hc, wc = values.shape[-2:]
    grid = _resample_grid(grid, (hc, wc))
    factor = supersample_factor(grid, out_hw) if supersample is None else int(supersample)
    if factor < 1:
        raise ValueError(f"supersample must be >= 1 (or None for automatic), got {supersample}")
    if factor > 1:
        size = (hc * factor, wc * factor)
        grid = _resample_grid(grid, size)
        values = F.interpolate(values, size=size, mode=mode, **_align(mode))
    accum, weight = splat(values, grid, out_hw)
    covered = weight > min_weight
    mean = torch.where(covered, accum / weight.clamp_min(min_weight), torch.zeros_like(accum))
    return mean, covered


def _align(mode: str) -> dict[str, bool]:
    return {"align_corners": False} if mode in ("bilinear", "bicubic") else {}


# ----------------------------------------------------------------------------------------------
# Propagation from congealed space (Sec. 4.4.1)
# ----------------------------------------------------------------------------------------------


def propagate_overlay(
    images: Tensor,
    grids: Tensor,
    overlay_rgba: Tensor,
    supersample: int | None = None,
    min_weight: float = MIN_WEIGHT,
) -> Tensor:
    """Composite an RGBA edit drawn in congealed space over every image (Sec. 4.4.1, Fig. 4.4).

    ``images [N, 3, H, W]`` in [-1, 1], ``grids [N, Hc, Wc, 2]`` from the congealer,
    ``overlay_rgba [4, He, We]`` (or [N, 4, He, We]) in [0, 1], straight alpha, any size (the grid
    is resampled to it). Premultiplied colour and alpha are splatted (:func:`splat_dense`),
    normalised by the splat weight, and composited "over" the image:
    ``out = image (1 - alpha) + colour alpha``. Pixels no congealed pixel reaches keep the image.
    """
    if overlay_rgba.ndim == 3:
        overlay_rgba = overlay_rgba.unsqueeze(0)
    if overlay_rgba.ndim != 4 or overlay_rgba.shape[1] != 4:
        raise ValueError(
            f"overlay must be RGBA [4, H, W] in [0, 1], got shape {tuple(overlay_rgba.shape)}; "
            "save the edit as an RGBA PNG with transparency"
        )
    n = images.shape[0]
    overlay = overlay_rgba.to(images).expand(n, -1, -1, -1)
    alpha = overlay[:, 3:]
    values = torch.cat([(overlay[:, :3] * 2 - 1) * alpha, alpha], dim=1)
    mean, _ = splat_dense(
        values, grids.to(images), images.shape[-2:], "bilinear", supersample, min_weight
    )
    return images * (1 - mean[:, 3:]) + mean[:, :3]


def propagate_labels(
    grids: Tensor,
    label_map: Tensor,
    out_hw: Size,
    num_classes: int | None = None,
    supersample: int | None = None,
    min_weight: float = MIN_WEIGHT,
) -> Tensor:
    """Carry a dense label map drawn in congealed space to every image (Sec. 4.4.1).

    ``label_map [He, We]`` holds class indices 0..num_classes-1 (default: max + 1). The one-hot
    map is splatted (nearest-neighbour supersampling keeps labels crisp) and each image pixel
    takes the class with the largest splatted weight. Returns ``[N, H, W]`` int64 labels, with
    **-1 where no congealed pixel lands** (outside the congealed view of that image).
    """
    labels = label_map.long()
    if labels.ndim != 2:
        raise ValueError(f"label_map must be [H, W] class indices, got {tuple(labels.shape)}")
    if num_classes is None:
        num_classes = int(labels.max()) + 1
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"label_map values must lie in 0..{num_classes - 1} (num_classes={num_classes}), got "
            f"{int(labels.min())}..{int(labels.max())}; pass num_classes=max label + 1"
        )
    n = grids.shape[0]
    one_hot = F.one_hot(labels.to(grids.device), num_classes).permute(2, 0, 1).to(grids.dtype)
    mean, covered = splat_dense(
        one_hot.expand(n, -1, -1, -1), grids, out_hw, "nearest", supersample, min_weight
    )
    return torch.where(covered[:, 0], mean.argmax(dim=1), torch.full_like(mean[:, 0], -1).long())


def propagate_keypoints(
    grids: Tensor,
    points: Tensor,
    image_size: Size | None = None,
    flipped: Tensor | None = None,
    permutation: list[int] | Tensor | None = None,
) -> Tensor:
    """Carry keypoints ``[K, 2]`` (pixels of the congealed image, at the grids' resolution) into
    every image (Sec. 4.4.1): ``[N, K, 2]`` image pixels of size ``image_size`` (default: the
    grids' size), by sampling the reverse grid at each point.

    Where the congealer mirrored an image (``flipped [N]``), point k lands on the mirror-image
    part (a "left eye" drawn on the template lands on the image's right eye); pass the left/right
    ``permutation`` (as for :func:`gangealing.eval.pck.flip_keypoints`) to reorder those images'
    points so index k names the same part everywhere, as the thesis does for PCK (Sec. 4.4.2).
    """
    points = torch.as_tensor(points, dtype=grids.dtype, device=grids.device)
    if points.ndim != 2 or points.shape[-1] != 2:
        raise ValueError(f"points must be [K, 2] (x, y) pixels, got {tuple(points.shape)}")
    out = transfer_points_from_congealed(points.expand(grids.shape[0], -1, -1), grids, image_size)
    if permutation is not None and flipped is not None:
        index = torch.as_tensor(permutation, dtype=torch.long, device=out.device)
        out = torch.where(flipped.to(out.device).view(-1, 1, 1), out[:, index], out)
    return out


# ----------------------------------------------------------------------------------------------
# Direct image-to-image correspondence (Sec. 4.4.2)
# ----------------------------------------------------------------------------------------------


def dense_correspondence(
    grid_a: Tensor,
    grid_b: Tensor,
    size_a: Size | None = None,
    size_b: Size | None = None,
    chunk: int = 4096,
    return_valid: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """For every pixel of A ``[N, Ha, Wa]``, its location in B: ``[N, Ha, Wa, 2]`` pixels
    (Sec. 4.4.2, Fig. 4.3). The lattice of A is sent forward into congealed space
    (:func:`gangealing.align.stn.transfer_points_to_congealed`, in chunks of ``chunk`` points to
    bound the nearest-search memory) and back into B.

    ``return_valid=True`` also returns ``valid [N, Ha, Wa]``: the pixel of A is seen by the
    congealed image (the round trip A -> congealed -> A is within 0.5 px); other pixels map to the
    nearest visible location.
    """
    ha, wa = size_hw(size_a) if size_a is not None else tuple(grid_a.shape[1:3])
    n = grid_a.shape[0]
    ys, xs = torch.meshgrid(
        torch.arange(ha, dtype=grid_a.dtype, device=grid_a.device),
        torch.arange(wa, dtype=grid_a.dtype, device=grid_a.device),
        indexing="ij",
    )
    lattice = torch.stack([xs, ys], dim=-1).reshape(1, -1, 2).expand(n, -1, -1)
    mapped, valid = [], []
    for start in range(0, lattice.shape[1], chunk):
        points = lattice[:, start : start + chunk]
        congealed = transfer_points_to_congealed(points, grid_a, (ha, wa))
        mapped.append(transfer_points_from_congealed(congealed, grid_b, size_b))
        if return_valid:
            back = transfer_points_from_congealed(congealed, grid_a, (ha, wa))
            valid.append((back - points).norm(dim=-1) < 0.5)
    coords = torch.cat(mapped, dim=1).reshape(n, ha, wa, 2)
    if return_valid:
        return coords, torch.cat(valid, dim=1).reshape(n, ha, wa)
    return coords


# ----------------------------------------------------------------------------------------------
# Automated dataset pre-processing (Sec. 4.4.3)
# ----------------------------------------------------------------------------------------------


def flow_smoothness_scores(field: Tensor, kind: str = "grid") -> Tensor:
    """Per-image smoothness score ``[N]`` of a warp, lower = smoother (Sec. 4.4.3).

    ``kind="grid"``: ``field`` is a sampling grid [N, H, W, 2] and the residual
    ``grid - identity`` is scored; ``kind="flow"``: ``field`` already is the residual flow
    (``STNOutput.flow``). The score is the Huber total variation L_TV of Sec. 4.3.1 per image,
    as the official ``flow_scores``: images whose flow is rough are usually misaligned (occluded,
    out-of-distribution), and dropping them is the automated filtering step.
    """
    if kind not in ("grid", "flow"):
        raise ValueError(f"kind must be 'grid' or 'flow', got {kind!r}")
    if field.ndim != 4 or field.shape[-1] != 2:
        raise ValueError(f"expected a grid or flow [N, H, W, 2], got {tuple(field.shape)}")
    if kind == "grid":
        n, h, w, _ = field.shape
        field = field - identity_grid(n, h, w, field.device, field.dtype)
    return total_variation_huber(field, reduction="none")


def out_of_bounds_fraction(grid: Tensor, content_hw: Tensor | None = None) -> Tensor:
    """Per image [N], the fraction of congealed pixels sampled beyond the photo in x or y (the
    larger), for a grid [N, S, S, 2] into a square that holds a ``content_hw`` [N, 2] photo
    centred and padded (None: the photo fills the square). Official
    ``check_if_warp_exceeds_image_boundaries`` compares it with a threshold (0.025); the bounds
    are its (round(S h / w) - 1) / S for landscape photos, likewise for portrait."""
    n, s = grid.shape[0], grid.shape[-2]
    bound_y = grid.new_full((n,), float(s))
    bound_x = grid.new_full((n,), float(s))
    if content_hw is not None:
        h, w = content_hw.to(grid).unbind(1)
        landscape = h < w
        bound_y = torch.where(landscape, (s * h / w).round(), bound_y)
        bound_x = torch.where(landscape, bound_x, (s * w / h).round())

    def beyond(v: Tensor, bound: Tensor) -> Tensor:
        return (v.flatten(1).abs() > ((bound - 1) / s)[:, None]).float().mean(1)

    return torch.maximum(beyond(grid[..., 0], bound_x), beyond(grid[..., 1], bound_y))


def rank_by_smoothness(scores: Tensor) -> Tensor:
    """Indices ordering the images best (smoothest, lowest score) first; ties keep input order."""
    return torch.sort(scores.detach().flatten().cpu(), stable=True).indices


__all__ = [
    "MIN_WEIGHT",
    "dense_correspondence",
    "flow_smoothness_scores",
    "out_of_bounds_fraction",
    "propagate_keypoints",
    "propagate_labels",
    "propagate_overlay",
    "rank_by_smoothness",
    "splat",
    "splat_dense",
    "supersample_factor",
]
