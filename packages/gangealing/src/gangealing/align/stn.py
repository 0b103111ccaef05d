"""GANgealing Spatial Transformers T (thesis Sec. 4.3.1, "Spatial Transformer Parameterization").

T takes an image and regresses a *reverse* sampling grid G in R^{H x W x 2}: for every pixel of the
output (congealed) image, where to sample in the input image. Conventions used throughout:

- images are float NCHW, RGB, in [-1, 1];
- grids are [N, H, W, 2] in (x, y) order, normalised to [-1, 1] with the ``align_corners=False``
  convention of ``F.grid_sample`` (pixel edges at +-1, pixel centres at (2i + 1) / W - 1);
- keypoints are pixel coordinates (x, y) whose pixel centres sit at integer positions.

``SimilarityTransformer`` (rotation, uniform scale, two shifts), ``FlowTransformer`` (unconstrained
per-pixel residual flow) and ``ComposedTransformer`` (similarity into flow, the thesis' final T)
all return an ``STNOutput``. Correspondence utilities follow Sec. 4.4.1 (propagation from
congealed space) and Sec. 4.4.2 (direct image-to-image transfer).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.errors import NonFiniteError
from gangealing.align.flow import total_variation_huber

Size = int | tuple[int, int]
PADDING_MODES = ("reflection", "border", "zeros")


def size_hw(size: Size) -> tuple[int, int]:
    """``(height, width)`` of an image size given as one int (square) or a pair."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


# ----------------------------------------------------------------------------------------------
# Coordinates, grids and warps
# ----------------------------------------------------------------------------------------------


def pixel_to_normalized(points: Tensor, size: Size) -> Tensor:
    """Pixel (x, y), centres at integers -> normalised u = (2x + 1) / W - 1."""
    h, w = size_hw(size)
    scale = points.new_tensor([w, h])
    return (2 * points + 1) / scale - 1


def normalized_to_pixel(points: Tensor, size: Size) -> Tensor:
    """Inverse of :func:`pixel_to_normalized`: x = ((u + 1) W - 1) / 2."""
    h, w = size_hw(size)
    scale = points.new_tensor([w, h])
    return ((points + 1) * scale - 1) / 2


def identity_grid(
    n: int, h: int, w: int, device: torch.device | None = None, dtype: torch.dtype | None = None
) -> Tensor:
    """Identity sampling grid [N, H, W, 2] at the pixel centres (align_corners=False)."""
    eye = torch.eye(2, 3, device=device, dtype=dtype or torch.float32).expand(n, 2, 3)
    return F.affine_grid(eye, [n, 1, h, w], align_corners=False)


def grid_sample(input: Tensor, grid: Tensor, padding_mode: str = "reflection") -> Tensor:
    """``F.grid_sample`` (bilinear, ``align_corners=False``) of a grid checked to be finite:
    torch's CPU kernel crashes the whole process (segfault) on a NaN grid with reflection or
    border padding. On GPUs NaN only propagates, and the training guard stops on it."""
    if grid.device.type == "cpu" and not bool(torch.isfinite(grid).all()):
        raise NonFiniteError(
            "a sampling grid holds NaN or inf (the spatial transformer or its input diverged); "
            "check the input images for NaN"
        )
    return F.grid_sample(
        input, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False
    )


def warp(images: Tensor, grid: Tensor, padding_mode: str = "reflection") -> Tensor:
    """Reverse-warp ``images`` [N, C, H, W] with ``grid`` [N, H', W', 2] (bilinear resampling)."""
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    return grid_sample(images, grid, padding_mode)


def compose_grids(outer: Tensor, inner: Tensor) -> Tensor:
    """Grid of "warp with ``outer``, then warp the result with ``inner``" as ONE reverse warp.

    ``warp(x, compose_grids(outer, inner)) ~= warp(warp(x, outer), inner)``: the outer grid is
    sampled bilinearly (border padding) at the inner grid's positions. Exact where ``outer`` is
    locally affine and ``inner`` stays inside the hull of the outer pixel centres.
    """
    return grid_sample(outer.permute(0, 3, 1, 2), inner, "border").permute(0, 2, 3, 1)


def _apply_affine(matrix: Tensor, grid: Tensor) -> Tensor:
    """Apply [N, 2, 3] affine matrices to the points of a grid [N, H, W, 2] (exact composition)."""
    return torch.einsum("nij,nhwj->nhwi", matrix[:, :, :2], grid) + matrix[:, None, None, :, 2]


def _compose_affine(first: Tensor, second: Tensor) -> Tensor:
    """Reverse-warp matrix of "warp with ``first``, then with ``second``" = first @ second."""
    linear = first[:, :, :2] @ second[:, :, :2]
    shift = first[:, :, :2] @ second[:, :, 2:] + first[:, :, 2:]
    return torch.cat([linear, shift], dim=2)


def _sample_grid_at(grid: Tensor, normalized_points: Tensor) -> Tensor:
    """Bilinearly sample a grid [N, H, W, 2] at normalised points [N, P, 2] -> [N, P, 2]."""
    out = grid_sample(grid.permute(0, 3, 1, 2), normalized_points.unsqueeze(2), "border")
    return out[..., 0].permute(0, 2, 1)


# ----------------------------------------------------------------------------------------------
# Point transfer (Sec. 4.4.1 and 4.4.2)
# ----------------------------------------------------------------------------------------------


def transfer_points_from_congealed(
    points: Tensor, grid: Tensor, input_size: Size | None = None
) -> Tensor:
    """Reverse map (Sec. 4.4.1): congealed pixel points [N, P, 2] -> input-image pixel points.

    Samples the grid at the congealed points; ``input_size`` (H, W) of the input image defaults to
    the grid's size. Exact up to bilinear interpolation of the grid.
    """
    congealed_hw = grid.shape[1:3]
    sampled = _sample_grid_at(grid, pixel_to_normalized(points, congealed_hw))
    return normalized_to_pixel(sampled, input_size or congealed_hw)


def transfer_points_to_congealed(
    points: Tensor, grid: Tensor, input_size: Size | None = None, refine_steps: int = 5
) -> Tensor:
    """Forward map (Sec. 4.4.1): input-image pixel points [N, P, 2] -> congealed pixel points.

    The grid only stores the reverse map, so we invert it numerically: (1) nearest search over all
    congealed pixels for the sampling location closest to each point, then (2) ``refine_steps``
    damped Gauss-Newton steps on ``|G(p) - q|^2`` with the bilinearly interpolated grid and a
    one-pixel central-difference Jacobian. Accuracy: exact (to float precision) for locally affine
    grids such as similarity warps away from the outermost half-pixel ring; for flows, the error
    is bounded by the grid's non-linearity within one pixel. Points not visible in the congealed
    image (outside the grid's range) map to the closest visible location found (each step is kept
    only if it reduces the residual), inside the congealed image.
    """
    n, h, w, _ = grid.shape
    target = pixel_to_normalized(points, input_size or (h, w))
    dist = torch.cdist(target, grid.reshape(n, h * w, 2))  # [N, P, H*W]
    index = dist.argmin(dim=2)
    p = torch.stack([index % w, torch.div(index, w, rounding_mode="floor")], dim=-1).to(grid.dtype)
    p = pixel_to_normalized(p, (h, w))
    step = p.new_tensor([2.0 / w, 2.0 / h])
    eye = torch.eye(2, dtype=grid.dtype, device=grid.device)
    residual = _sample_grid_at(grid, p) - target
    for _ in range(refine_steps):
        columns = []
        for axis in range(2):
            offset = torch.zeros_like(step)
            offset[axis] = step[axis]
            diff = _sample_grid_at(grid, p + offset) - _sample_grid_at(grid, p - offset)
            columns.append(diff / (2 * step[axis]))
        jac = torch.stack(columns, dim=-1)  # [N, P, 2 (grid), 2 (position)]
        jt = jac.transpose(-1, -2)
        damping = 1e-6 * (jt @ jac).diagonal(dim1=-2, dim2=-1).sum(-1)[..., None, None] + 1e-12
        delta = torch.linalg.solve(jt @ jac + damping * eye, (jt @ residual.unsqueeze(-1)))
        candidate = (p - delta.squeeze(-1)).clamp(-1, 1)
        candidate_residual = _sample_grid_at(grid, candidate) - target
        better = (candidate_residual.norm(dim=-1) < residual.norm(dim=-1)).unsqueeze(-1)
        p = torch.where(better, candidate, p)  # keep a step only if it reduces |G(p) - q|
        residual = torch.where(better, candidate_residual, residual)
    return normalized_to_pixel(p, (h, w))


def _check_same_congealed_size(grid_a: Tensor, grid_b: Tensor) -> None:
    if grid_a.shape[1:3] != grid_b.shape[1:3]:
        raise ValueError(
            "grid_a and grid_b must share one congealed size; predict both at one size"
        )


def check_rgb(images: Tensor) -> None:
    """Refuse anything but a batch of RGB images [N, 3, H, W] (what every congealer takes)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(
            f"expected RGB images [N, 3, H, W] in [-1, 1], got shape {tuple(images.shape)}; "
            "convert grayscale or RGBA images to RGB first"
        )


def image_to_image_points(
    points_a: Tensor,
    grid_a: Tensor,
    grid_b: Tensor,
    size_a: Size | None = None,
    size_b: Size | None = None,
) -> Tensor:
    """Direct correspondence A -> B (Sec. 4.4.2): forward warp of A, then reverse warp of B."""
    _check_same_congealed_size(grid_a, grid_b)
    congealed = transfer_points_to_congealed(points_a, grid_a, size_a)
    return transfer_points_from_congealed(congealed, grid_b, size_b)


def nearest_neighbour_points(
    points_a: Tensor,
    grid_a: Tensor,
    grid_b: Tensor,
    size_a: Size | None = None,
    size_b: Size | None = None,
) -> Tensor:
    """The released code's correspondence A -> B (official ``ComposedSTN.transfer_points``): the
    forward map is the congealed pixel whose sampling point is nearest to the keypoint (no
    sub-pixel refinement), and that pixel index i in [0, S - 1] re-enters B's reverse grid at
    ``(2 i / (S - 1) - 1) (W_B - 1) / W_B`` (the official ``normalize``, slightly off the pixel
    centres). Grids at the STN's flow size, as the official evaluation predicts them."""
    _check_same_congealed_size(grid_a, grid_b)
    n, h, w, _ = grid_a.shape
    target = pixel_to_normalized(points_a, size_a or (h, w))
    index = torch.cdist(target, grid_a.reshape(n, h * w, 2)).argmin(dim=2)
    cells = torch.stack([index % w, torch.div(index, w, rounding_mode="floor")], -1).to(grid_a)
    hb, wb = size_hw(size_b) if size_b is not None else (h, w)
    scale = cells.new_tensor([(wb - 1) / wb, (hb - 1) / hb])
    normalized = (cells / cells.new_tensor([w - 1, h - 1]) * 2 - 1) * scale
    return normalized_to_pixel(_sample_grid_at(grid_b, normalized), (hb, wb))


# ----------------------------------------------------------------------------------------------
# Networks
# ----------------------------------------------------------------------------------------------


class ConvTrunk(nn.Module):
    """Feature trunk: antialiased bilinear resize to ``input_size``, then stride-2 conv blocks.

    Each block is conv3x3 (stride 2) -> GroupNorm -> LeakyReLU(0.2) -> conv3x3 -> GroupNorm ->
    LeakyReLU(0.2); a simpler stand-in for the ResNet-style trunk of the official GANgealing STN.
    """

    def __init__(self, input_size: int, widths: Sequence[int], in_channels: int = 3):
        super().__init__()
        self.input_size = input_size
        layers: list[nn.Module] = []
        prev = in_channels
        for width in widths:
            for stride in (2, 1):
                layers += [
                    nn.Conv2d(prev, width, 3, stride=stride, padding=1),
                    nn.GroupNorm(min(8, width), width),
                    nn.LeakyReLU(0.2),
                ]
                prev = width
        self.layers = nn.Sequential(*layers)
        self.out_channels = prev

    def forward(self, images: Tensor) -> Tensor:
        if images.shape[-2:] != (self.input_size, self.input_size):
            images = F.interpolate(
                images,
                size=(self.input_size,) * 2,
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )
        return self.layers(images)


@dataclass
class STNOutput:
    """Result of a Spatial Transformer.

    image: congealed image [N, C, H, W], ONE resampling of the input; grid: reverse grid
    [N, H, W, 2] into the ORIGINAL input (also for flipped images); flow: residual flow
    [N, H, W, 2] (flow STNs); similarity_matrix: reverse affine [N, 2, 3] into the original input
    (similarity STNs); flipped: bool [N], True where the mirrored input was selected.
    """

    image: Tensor
    grid: Tensor
    flow: Tensor | None = None
    similarity_matrix: Tensor | None = None
    flipped: Tensor | None = None


class _SpatialTransformer(nn.Module, ABC):
    """Shared forward with test-time ``iters`` and ``flips`` (Sec. 4.3.1, last sentence)."""

    def __init__(self, output_size: Size | None, padding_mode: str):
        super().__init__()
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        self.output_size = output_size
        self.padding_mode = padding_mode

    def _out_hw(self, source: Tensor) -> tuple[int, int]:
        return (
            size_hw(self.output_size) if self.output_size is not None else tuple(source.shape[-2:])
        )

    @abstractmethod
    def _forward(self, images: Tensor, source: Tensor, iters: int) -> STNOutput:
        """Warp ``source`` with the transform predicted from ``images`` (``iters`` iterations)."""

    def default_flip_cost(self, out: STNOutput) -> Tensor | None:
        """Per-sample cost used to choose flips when none is given (None: no default)."""
        return None

    def forward(
        self,
        images: Tensor,
        source: Tensor | None = None,
        *,
        iters: int = 1,
        flips: bool = False,
        flip_cost: Callable[[STNOutput], Tensor] | None = None,
        target: Tensor | None = None,
        target_loss: Callable[[Tensor, Tensor], Tensor] | None = None,
    ) -> STNOutput:
        """Congeal ``images``; the output samples ``source`` (default ``images``, e.g. a higher
        resolution copy). ``iters`` re-applies the similarity STN to its own output. With ``flips``,
        the mirrored input is also tried and, per image, the candidate with the smaller cost kept:
        ``flip_cost(out) -> [N]``, else ``target_loss(out.image, target) -> [N]`` (default: mean
        squared error), else the module's default (flow smoothness, as in the official code).
        """
        source = images if source is None else source
        out = self._forward(images, source, iters)
        if not flips:
            out.flipped = torch.zeros(images.shape[0], dtype=torch.bool, device=images.device)
            return out
        mirrored = self._forward(images.flip(-1), source.flip(-1), iters)
        # The mirrored input is x(-u, v): negate x of the grid/matrix so they index the original.
        mirrored.grid = mirrored.grid * mirrored.grid.new_tensor([-1.0, 1.0])
        if mirrored.similarity_matrix is not None:
            sign = mirrored.similarity_matrix.new_tensor([-1.0, 1.0])[None, :, None]
            mirrored.similarity_matrix = mirrored.similarity_matrix * sign
        costs = [self._cost(o, flip_cost, target, target_loss) for o in (out, mirrored)]
        choose = costs[1] < costs[0]
        merged = {}
        for field in fields(STNOutput):
            a, b = getattr(out, field.name), getattr(mirrored, field.name)
            if a is not None:
                mask = choose.view(-1, *([1] * (a.dim() - 1)))
                merged[field.name] = torch.where(mask, b, a)
        return replace(out, **merged, flipped=choose)

    def _cost(self, out: STNOutput, flip_cost, target, target_loss) -> Tensor:
        if flip_cost is not None:
            return flip_cost(out)
        if target is not None:
            if target_loss is None:
                return (out.image - target).pow(2).flatten(1).mean(1)
            return target_loss(out.image, target).reshape(-1)
        cost = self.default_flip_cost(out)
        if cost is None:
            raise ValueError(
                f"{type(self).__name__} has no default flip criterion: pass flip_cost=callable(out)"
                " -> [N] or target=<aligned targets> (optionally target_loss=...)"
            )
        return cost


class SimilarityTransformer(_SpatialTransformer):
    """Similarity STN: regresses (rotation, log-scale, shift x, shift y) -> reverse affine matrix

    A = [[s cos r, -s sin r, tx], [s sin r, s cos r, ty]], s = exp(log-scale), in normalised
    coordinates (a true rotation for square images). The head is zero-initialised: T starts as
    the identity. ``iters`` composes the matrices so the output is one resampling of the input.
    """

    def __init__(
        self,
        input_size: int,
        widths: Sequence[int],
        padding_mode: str,
        output_size: Size | None = None,
    ):
        super().__init__(output_size, padding_mode)
        self.trunk = ConvTrunk(input_size, widths)
        c = self.trunk.out_channels
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c, c), nn.LeakyReLU(0.2), nn.Linear(c, 4))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def predict_matrix(self, images: Tensor) -> Tensor:
        """Regress the reverse similarity matrix [N, 2, 3] of ``images``."""
        features = self.trunk(images).mean(dim=(2, 3))
        rotation, log_scale, tx, ty = self.head(features).unbind(dim=1)
        cos, sin, scale = torch.cos(rotation), torch.sin(rotation), torch.exp(log_scale)
        row0 = torch.stack([scale * cos, -scale * sin, tx], dim=1)
        row1 = torch.stack([scale * sin, scale * cos, ty], dim=1)
        return torch.stack([row0, row1], dim=1)

    def _forward(self, images: Tensor, source: Tensor, iters: int) -> STNOutput:
        if iters < 1:
            raise ValueError(f"iters must be >= 1, got {iters}")
        matrix = self.predict_matrix(images)
        for _ in range(iters - 1):
            grid = F.affine_grid(matrix, list(images.shape), align_corners=False)
            matrix = _compose_affine(
                matrix, self.predict_matrix(warp(images, grid, self.padding_mode))
            )
        h, w = self._out_hw(source)
        grid = F.affine_grid(matrix, [source.shape[0], 1, h, w], align_corners=False)
        image = warp(source, grid, self.padding_mode)
        return STNOutput(image=image, grid=grid, similarity_matrix=matrix)


class FlowTransformer(_SpatialTransformer):
    """Unconstrained STN: a residual flow regressed at ``flow_size`` x ``flow_size``
    (zero-initialised head), upsampled bilinearly to the output size and added to the identity grid.
    """

    def __init__(
        self,
        input_size: int,
        widths: Sequence[int],
        flow_size: int,
        padding_mode: str,
        output_size: Size | None = None,
    ):
        super().__init__(output_size, padding_mode)
        self.flow_size = flow_size
        self.trunk = ConvTrunk(input_size, widths)
        c = self.trunk.out_channels
        self.head = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(c, 2, 3, padding=1)
        )
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def predict_flow(self, images: Tensor, out_hw: tuple[int, int]) -> Tensor:
        """Residual flow [N, H, W, 2] (normalised units) at the output size ``out_hw``."""
        features = self.trunk(images)
        features = F.interpolate(
            features, size=(self.flow_size,) * 2, mode="bilinear", align_corners=False
        )
        flow = F.interpolate(self.head(features), size=out_hw, mode="bilinear", align_corners=False)
        return flow.permute(0, 2, 3, 1)

    def default_flip_cost(self, out: STNOutput) -> Tensor:
        return total_variation_huber(out.flow, reduction="none")

    def _forward(self, images: Tensor, source: Tensor, iters: int) -> STNOutput:
        h, w = self._out_hw(source)
        flow = self.predict_flow(images, (h, w))
        grid = identity_grid(source.shape[0], h, w, source.device, flow.dtype) + flow
        return STNOutput(image=warp(source, grid, self.padding_mode), grid=grid, flow=flow)


class ComposedTransformer(_SpatialTransformer):
    """The thesis' final T: the similarity STN first, then the flow STN on the similarity-aligned
    image, trained end-to-end. The final grid applies the similarity matrix to the flow grid's
    points (the exact form of sampling the similarity grid at the flow grid), so the output is one
    resampling of the input. ``iters`` iterates the similarity stage only.
    """

    def __init__(self, similarity: SimilarityTransformer, flow: FlowTransformer):
        super().__init__(flow.output_size, flow.padding_mode)
        self.similarity = similarity
        self.flow = flow

    def default_flip_cost(self, out: STNOutput) -> Tensor:
        return total_variation_huber(out.flow, reduction="none")

    def _forward(self, images: Tensor, source: Tensor, iters: int) -> STNOutput:
        aligned = self.similarity._forward(images, images, iters)
        h, w = self._out_hw(source)
        flow = self.flow.predict_flow(aligned.image, (h, w))
        flow_grid = identity_grid(source.shape[0], h, w, source.device, flow.dtype) + flow
        grid = _apply_affine(aligned.similarity_matrix, flow_grid)
        image = warp(source, grid, self.padding_mode)
        return STNOutput(
            image=image, grid=grid, flow=flow, similarity_matrix=aligned.similarity_matrix
        )
