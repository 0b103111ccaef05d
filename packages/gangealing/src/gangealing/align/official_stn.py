"""The Spatial Transformers of the released GANgealing models (thesis Sec. 4.3.1), in plain PyTorch.

Same parameters, state-dict names and outputs as the official ``ComposedSTN`` /
``SpatialTransformer`` (wpeebles/gangealing, ``models/spatial_transformers/``), written from what
they compute:

- trunk: ``convs`` = a 1x1 ``ConvLayer`` from RGB, then StyleGAN2 discriminator ``ResBlock``s
  (equalised learning rate, blurred stride-2 downsampling) from ``flow_size`` down to 4 px
  (similarity) or for ``log2(flow_size) - 4`` blocks of which ``log2(flow_downsample)`` downsample
  (flow), then ``final_conv`` (3x3); channels follow the StyleGAN2 table (``max_channels`` up to
  32 px, ``256 x channel_multiplier`` at 64 px, ...);
- similarity head: ``final_linear`` (EqualLinear, fused leaky ReLU) and ``warp_head.linear``
  regress, per cluster k, (rotation, log-scale, shift x, shift y), ordered [rotations x K,
  scales x K, shifts x x K, shifts y x K]; rotation = pi tanh(raw), scale = exp(raw);
- flow head: ``warp_head.flow_out`` regresses a residual flow at flow_size / flow_downsample and
  ``warp_head.mask_out`` the weights of its convex (RAFT) upsampling by ``flow_downsample``;
- sampling: mipmap anti-aliasing (``sampling.mipmap_warp``); inputs larger than ``flow_size`` are
  shrunk by the tent filter ``input_downsample`` before regression, while the warp samples the
  full-resolution input (one resampling per stage, the similarity matrix composed into the flow).

``OfficialComposedSTN.congeal`` returns this package's ``STNOutput`` with the test-time options of
the official applications: ``iters`` (re-applies the similarity stage to its own output),
``flips`` (keeps the input or its mirror, whichever gives the smoother residual flow) and
``cluster`` (a head per image, for clustering models).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gangealing.align.flow import total_variation_huber
from gangealing.align.sampling import BilinearDownsample, MipmapWarp
from gangealing.align.stn import STNOutput
from gangealing.stylegan2.ops import ConvLayer, EqualConv2d, EqualLinear, ResBlock

OFFICIAL_PADDING = ("border", "reflection", "zeros")


def official_channels(channel_multiplier: float, max_channels: int) -> dict[int, int]:
    """The official STN channel table (the StyleGAN2 discriminator's, scaled below 64 px)."""
    table = {s: max_channels for s in (4, 8, 16, 32)}
    table.update({64: 256, 128: 128, 256: 64, 512: 32, 1024: 16})
    for s in (64, 128, 256, 512, 1024):
        table[s] = int(table[s] * channel_multiplier)
    return table


def resblock_trunk(
    ch: dict[int, int], size: int, end: int, downsamples: int, blur_kernel: Sequence[int]
) -> tuple[nn.Sequential, int]:
    """``convs`` of the official STN and classifier: a 1x1 ``ConvLayer`` from RGB, then one
    ``ResBlock`` per level from log2(size) down to ``end`` + 1 (channels ``ch[2 ** (i - 1)]``),
    the first ``downsamples`` of them halving the resolution. Returns it and its width."""
    convs: list[nn.Module] = [ConvLayer(3, ch[size], 1)]
    in_ch = ch[size]
    for n, i in enumerate(range(int(math.log2(size)), end, -1)):
        convs.append(ResBlock(in_ch, ch[2 ** (i - 1)], blur_kernel, downsample=n < downsamples))
        in_ch = ch[2 ** (i - 1)]
    return nn.Sequential(*convs), in_ch


def unmirror(out: STNOutput, mirrored: Tensor) -> STNOutput:
    """Make the grid (and similarity matrix) of outputs computed from mirrored inputs index the
    original images: x -> -x where ``mirrored`` [N] (the residual flow stays as predicted)."""
    sign = torch.where(mirrored, -1.0, 1.0).to(out.grid.dtype)
    out.grid = torch.cat([out.grid[..., :1] * sign.view(-1, 1, 1, 1), out.grid[..., 1:]], -1)
    if out.similarity_matrix is not None:
        m = out.similarity_matrix
        out.similarity_matrix = torch.cat([m[:, :1] * sign.view(-1, 1, 1), m[:, 1:]], 1)
    return out


class SimilarityHead(nn.Module):
    """Features [N, D] -> per-cluster reverse similarity matrices (official ``SimilarityHead``)."""

    def __init__(self, in_features: int, num_heads: int = 1) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.linear = nn.Linear(in_features, 4 * num_heads)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)  # the identity warp at initialisation
        self.warper = MipmapWarp()
        self.register_buffer("one_hot", torch.tensor([0.0, 0.0, 1.0]).view(1, 1, 1, 3))

    def matrices(self, features: Tensor, heads: Tensor | None) -> Tensor:
        """[N, K, 2, 3] (all heads) or [N, 1, 2, 3] (``heads`` [N]: one head per image)."""
        n, k = features.shape[0], self.num_heads
        raw = self.linear(features).view(n, 4, k)  # [rotation, log-scale, tx, ty] x K
        if heads is not None:
            raw = raw.gather(2, heads.view(n, 1, 1).expand(n, 4, 1))
        rotation, log_scale, tx, ty = raw.unbind(1)
        rotation, scale = torch.tanh(rotation) * math.pi, torch.exp(log_scale)
        cos, sin = torch.cos(rotation), torch.sin(rotation)
        rows = [scale * cos, -scale * sin, tx, scale * sin, scale * cos, ty]
        return torch.stack(rows, dim=2).view(n, -1, 2, 3)


class FlowHead(nn.Module):
    """Features [N, C, h, w] -> residual flows at (flow_downsample h, flow_downsample w) by convex
    upsampling (official ``FlowHead``; RAFT's ``upsample_flow``)."""

    def __init__(self, channels: int, num_heads: int = 1, flow_downsample: int = 8) -> None:
        super().__init__()
        self.num_heads, self.factor = num_heads, flow_downsample
        self.flow_out = nn.Sequential(
            EqualConv2d(channels, channels, 3, padding=1), nn.ReLU(),
            EqualConv2d(channels, 2 * num_heads, 3, padding=1),
        )  # fmt: skip
        nn.init.zeros_(self.flow_out[-1].weight)
        nn.init.zeros_(self.flow_out[-1].bias)
        self.mask_out = nn.Sequential(
            EqualConv2d(channels, channels, 3, padding=1), nn.ReLU(),
            EqualConv2d(channels, num_heads * 9 * flow_downsample**2, 3, padding=1),
        )  # fmt: skip
        self.warper = MipmapWarp()

    def residual_flow(self, features: Tensor, heads: Tensor | None) -> Tensor:
        """[N * K, H, W, 2] (all heads, image-major) or [N, H, W, 2] (one head per image)."""
        n, _, h, w = features.shape
        k, d = self.num_heads, self.factor
        flow = self.flow_out(features).view(n, k, 2, h, w)
        mask = self.mask_out(features).view(n, k, 9 * d * d, h, w)
        if heads is not None:
            index = torch.arange(n, device=features.device)
            flow, mask = flow[index, heads][:, None], mask[index, heads][:, None]
        flow, mask = flow.flatten(0, 1), mask.flatten(0, 1)
        m = flow.shape[0]
        weights = mask.view(m, 1, 9, d, d, h, w).softmax(dim=2)
        patches = F.unfold(d * flow, [3, 3], padding=1).view(m, 2, 9, 1, 1, h, w)
        up = (weights * patches).sum(2)  # [m, 2, d, d, h, w]
        return up.permute(0, 4, 2, 5, 3, 1).reshape(m, d * h, d * w, 2)


class OfficialSpatialTransformer(nn.Module):
    """One official STN stage: ``transform`` "similarity" or "flow" (module docstring)."""

    def __init__(
        self,
        transform: str,
        flow_size: int,
        supersize: int,
        channel_multiplier: float,
        num_heads: int,
        flow_downsample: int,
        max_channels: int,
        blur_kernel: Sequence[int] = (1, 3, 3, 1),
    ) -> None:
        super().__init__()
        if transform not in ("similarity", "flow"):
            raise ValueError(f"transform={transform!r}; the official STNs are similarity or flow")
        self.is_flow, self.flow_size, self.supersize = transform == "flow", flow_size, supersize
        ch = official_channels(channel_multiplier, max_channels)
        log_size = int(math.log2(flow_size))
        end = log_size - 4 if self.is_flow else 2
        if flow_size not in ch or 2**end not in ch:
            raise ValueError(
                f"flow_size={flow_size} does not fit a {transform} STN; pass a power of two "
                f"from {16 if transform == 'similarity' else 64} to 1024 (gangealing.train: "
                "resolution=; model=stn/small takes smaller sizes)"
            )
        if supersize < flow_size or supersize % flow_size:
            raise ValueError(
                f"supersize={supersize} (the test-time input size) must be a multiple of "
                f"flow_size={flow_size}"
            )
        if supersize > flow_size:
            self.input_downsample = BilinearDownsample(supersize // flow_size, 3)
        downsamples = int(math.log2(flow_downsample)) if self.is_flow else log_size - end
        self.convs, in_ch = resblock_trunk(ch, flow_size, end, downsamples, blur_kernel)
        self.final_conv = ConvLayer(in_ch, ch[4], 3)
        if self.is_flow:
            self.warp_head = FlowHead(ch[4], num_heads, flow_downsample)
        else:
            self.final_linear = EqualLinear(ch[4] * 16, ch[4], activation="fused_lrelu")
            self.warp_head = SimilarityHead(ch[4], num_heads)
        self.num_heads = num_heads

    def features(self, images: Tensor) -> Tensor:
        if images.shape[-1] > self.flow_size:
            images = self.input_downsample(images)
        out = self.final_conv(self.convs(images))
        return out if self.is_flow else self.final_linear(out.flatten(1))

    def forward(
        self,
        images: Tensor,
        source: Tensor,
        output_size: int,
        padding_mode: str,
        heads: Tensor | None = None,
        base: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Warp ``source`` with the transform regressed from ``images``: (image, grid, matrix or
        residual flow). ``heads`` [N] picks one head per image (default: every head, outputs
        image-major ``[N * K]``); ``base`` [M, 2, 3] is composed before this stage's warp."""
        features = self.features(images)
        n = images.shape[0]
        if self.is_flow:
            residual = self.warp_head.residual_flow(features, heads)
            m, h, w, _ = residual.shape
            identity = F.affine_grid(
                torch.eye(2, 3, device=residual.device, dtype=residual.dtype)[None].expand(m, 2, 3),
                [m, 1, h, w], align_corners=False,
            )  # fmt: skip
            grid = identity + residual
            if base is not None:  # the similarity matrix applied to every flow point
                grid = (
                    torch.cat([grid, torch.ones_like(grid[..., :1])], -1)
                    @ base.transpose(1, 2)[:, None]
                )
            if output_size != h:
                grid = F.interpolate(
                    grid.permute(0, 3, 1, 2), scale_factor=output_size / h, mode="bilinear"
                ).permute(0, 2, 3, 1)
            warped = self._source(source, m, n)
            return self.warp_head.warper(warped, grid, padding_mode), grid, residual
        matrix = self.warp_head.matrices(features, heads)  # [N, K', 2, 3]
        if base is not None:
            base = base.view(n, -1, 2, 3)
            one_hot = self.warp_head.one_hot.expand(n, matrix.shape[1], 1, 3)
            matrix = base @ torch.cat([matrix, one_hot], 2)
        matrix = matrix.reshape(-1, 2, 3)
        m = matrix.shape[0]
        grid = F.affine_grid(matrix, [m, 1, output_size, output_size], align_corners=False)
        warped = self._source(source, m, n)
        return self.warp_head.warper(warped, grid, padding_mode), grid, matrix

    @staticmethod
    def _source(source: Tensor, m: int, n: int) -> Tensor:
        """``source`` repeated for every head when the stage warps each image K times."""
        return source.repeat_interleave(m // source.shape[0], 0) if m != source.shape[0] else source


class OfficialComposedSTN(nn.Module):
    """The released T: a similarity stage, then a flow stage on its output (official
    ``ComposedSTN(['similarity', 'flow'])``; state-dict keys ``stns.0.*``, ``stns.1.*``). Its
    arguments come from ``conf/model/stn/paper.yaml`` or, for a released file, from its tensors
    (``released.infer_architecture``)."""

    def __init__(
        self,
        transforms: Sequence[str],
        flow_size: int,
        supersize: int,
        channel_multiplier: float,
        num_heads: int,
        flow_downsample: int,
        max_channels: int,
    ) -> None:
        super().__init__()
        transforms = list(transforms)
        if transforms not in (["similarity", "flow"], ["similarity"], ["flow"]):
            raise ValueError(
                f"transform={transforms}; the released models use [similarity, flow] (or one)"
            )
        kw = dict(
            flow_size=flow_size, supersize=supersize, channel_multiplier=channel_multiplier,
            num_heads=num_heads, flow_downsample=flow_downsample, max_channels=max_channels,
        )  # fmt: skip
        self.transforms = transforms
        self.stns = nn.ModuleList([OfficialSpatialTransformer(t, **kw) for t in transforms])
        self.flow_size, self.supersize, self.num_heads = flow_size, supersize, num_heads
        self.channel_multiplier, self.max_channels = channel_multiplier, max_channels

    @property
    def predicts_flow(self) -> bool:
        return self.transforms[-1] == "flow"

    def _run(self, images, output_size, iters, padding_mode, heads, source=None) -> STNOutput:
        n, k = images.shape[0], self.num_heads
        source = images if source is None else source
        if heads is None and k > 1 and iters > 1:
            raise ValueError(
                f"iters={iters} with {k} clusters needs a cluster per image; pass cluster="
            )
        out, base, matrix, residual = images, None, None, None
        last = len(self.stns) - 1
        for i, stn in enumerate(self.stns):
            if stn.is_flow:
                stage_heads = heads
                if heads is None and k > 1:  # image n * K + j continues with head j
                    stage_heads = torch.arange(k, device=images.device).repeat(n)
                size = output_size if i == last else self.flow_size
                out, grid, residual = stn(out, source, size, padding_mode, stage_heads, base)
            else:
                for it in range(iters):
                    size = output_size if (i == last and it == iters - 1) else self.flow_size
                    out, grid, base = stn(out, source, size, padding_mode, heads, base)
                    if heads is None and k > 1 and source.shape[0] == n:
                        source = source.repeat_interleave(k, 0)
                matrix = base
        return STNOutput(image=out, grid=grid, flow=residual, similarity_matrix=matrix)

    def forward(
        self,
        images: Tensor,
        source: Tensor | None = None,
        *,
        output_size: int | None = None,
        padding_mode: str = "reflection",
    ) -> STNOutput:
        """Training pass (official ``gangealing_loss``): warp ``source`` (default ``images``) with
        every head's transform regressed from ``images`` [N, 3, S, S]; outputs are image-major
        [N * K] at ``output_size`` (default ``flow_size``), ``flow`` the residual flows."""
        if padding_mode not in OFFICIAL_PADDING:
            raise ValueError(f"padding_mode={padding_mode!r}; choose one of {OFFICIAL_PADDING}")
        return self._run(images, output_size or self.flow_size, 1, padding_mode, None, source)

    def congeal(
        self,
        images: Tensor,
        *,
        output_size: int | None = None,
        iters: int = 1,
        flips: bool = False,
        padding_mode: str = "border",
        cluster: Tensor | int | None = None,
    ) -> STNOutput:
        """Congeal ``images`` [N, 3, S, S] (S = the training input size); ``cluster`` (an int or
        [N]) picks the head of clustering models, None: every head (outputs [N * K]). With
        ``flips`` the mirrored input is tried too and kept where its residual flow is smoother
        (official ``forward_with_flip``; ties keep the input)."""
        if padding_mode not in OFFICIAL_PADDING:
            raise ValueError(f"padding_mode={padding_mode!r}; choose one of {OFFICIAL_PADDING}")
        if iters < 1:
            raise ValueError(f"iters={iters}; pass iters >= 1")
        if images.shape[-1] != self.supersize or images.shape[-2] != self.supersize:
            raise ValueError(
                f"this STN takes {self.supersize} px square inputs, got {tuple(images.shape[-2:])}"
            )
        heads = None
        if cluster is not None:
            heads = torch.as_tensor(cluster, device=images.device).expand(images.shape[0])
        size = output_size or self.flow_size
        out = self._run(images, size, iters, padding_mode, heads)
        out.flipped = torch.zeros(out.image.shape[0], dtype=torch.bool, device=images.device)
        if not flips:
            return out
        if not self.predicts_flow:
            raise ValueError("flips=true compares residual flows; this STN predicts none")
        if heads is None and self.num_heads > 1:
            raise ValueError("flips=true with several clusters needs cluster=; pass it")
        everywhere = torch.ones(images.shape[0], dtype=torch.bool, device=images.device)
        mirrored = unmirror(
            self._run(images.flip(-1), size, iters, padding_mode, heads), everywhere
        )
        costs = [total_variation_huber(o.flow, reduction="none") for o in (out, mirrored)]
        choose = costs[1] < costs[0]
        pick = lambda a, b: torch.where(choose.view(-1, *[1] * (a.dim() - 1)), b, a)  # noqa: E731
        return STNOutput(
            image=pick(out.image, mirrored.image),
            grid=pick(out.grid, mirrored.grid),
            flow=pick(out.flow, mirrored.flow),
            similarity_matrix=pick(out.similarity_matrix, mirrored.similarity_matrix),
            flipped=choose,
        )


class OfficialClusterClassifier(nn.Module):
    """The flip-aware cluster classifier of the released clustering models (official
    ``ResnetClassifier`` with ``num_heads = 2K``): a StyleGAN2 discriminator trunk at
    ``flow_size`` and 2K logits, where logit k + K means "cluster k, mirrored" (thesis Sec. 4.3.2:
    real images are routed to the Spatial Transformer of their cluster)."""

    def __init__(
        self,
        num_clusters: int,
        flow_size: int,
        supersize: int,
        channel_multiplier: float,
        max_channels: int,
        blur_kernel: Sequence[int] = (1, 3, 3, 1),
    ) -> None:
        super().__init__()
        self.num_clusters, self.flow_size = num_clusters, flow_size
        if supersize > flow_size:
            self.input_downsample = BilinearDownsample(supersize // flow_size, 3)
        ch = official_channels(channel_multiplier, max_channels)
        log_size = int(math.log2(flow_size))
        self.convs, in_ch = resblock_trunk(ch, flow_size, 2, log_size - 2, blur_kernel)
        self.final_conv = ConvLayer(in_ch, ch[4], 3)
        self.to_logits = EqualLinear(ch[4] * 16, 2 * num_clusters, activation="fused_lrelu")

    def forward(self, images: Tensor) -> Tensor:
        """Logits [N, 2K] of ``images`` [N, 3, S, S]."""
        if images.shape[-1] > self.flow_size:
            images = self.input_downsample(images)
        return self.to_logits(self.final_conv(self.convs(images)).flatten(1))

    def assign(self, images: Tensor, cluster: int | None = None) -> tuple[Tensor, Tensor]:
        """(cluster [N], mirrored [N]) of each image (official ``run_flip``); with ``cluster``,
        only whether each image should be mirrored to match that cluster (``run_flip_target``)."""
        logits = self(images)
        k = self.num_clusters
        if cluster is not None:
            mirrored = logits[:, [cluster, cluster + k]].argmax(1) == 1
            return torch.full_like(mirrored, cluster, dtype=torch.long), mirrored
        classes = logits.argmax(1)
        return classes % k, classes >= k
