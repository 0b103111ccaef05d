"""Automated GAN dataset pre-processing (thesis Sec. 4.4.3, Fig. 4.6; the library of
``python -m gangealing.preprocess``).

``python -m gangealing.preprocess ckpt=<run> data.root=<folder> out=<dir> keep=0.9 size=256``

1. Score every image by how smoothly the congealer warps it
   (:func:`gangealing.apps.correspondence.flow_smoothness_scores` on the residual flow
   ``STNOutput.flow``, the official ``flow_scores``; lower is better): rough flows flag images the
   aligner cannot explain (occlusions, several objects, wrong category).
   A congealer with only a similarity stage has no flow; its images are ranked by the similarity
   scale instead, ``score = -log s`` with ``s`` the scale of the reverse similarity matrix: the
   smaller the object in the image, the more its aligned crop is upsampled and blurred.
2. Keep the best ``keep`` fraction (at least one image) and, among them, drop the ones the
   official ``congeal_dataset.py`` drops: aligned crops that sample more than
   ``max_out_of_bounds`` of their pixels beyond the photo (official threshold 0.025; with
   ``square=border_pad`` the photo is padded, not cropped, as official ``border_pad``, and the
   padding counts as beyond), and crops whose object covers fewer than
   ``min_effective_resolution`` pixels of the photo (official 192 at 256 px output; measured
   here as the crop's side in photo pixels, scale x square side, where the official code
   multiplies by the photo's short side).
3. Write the kept images *similarity-aligned* (the thesis aligns datasets with the similarity
   Spatial Transformer, so objects keep their shape), sampled once from the original pixels at
   ``size`` x ``size``. A flow-only congealer has no similarity stage: its full warp is written.

Outputs: ``ranking.csv`` (``file,score,out_of_bounds,effective_resolution,kept``, best first)
and ``aligned/<file>.png``.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from common.checkpoint import atomic_write_bytes
from common.data.images import save_png
from gangealing.align.congealer import Congealer
from gangealing.align.stn import STNOutput, warp
from gangealing.apps.congeal import has_similarity_stage, refuse_ignored_options
from gangealing.apps.correspondence import (
    flow_smoothness_scores,
    out_of_bounds_fraction,
    rank_by_smoothness,
)
from gangealing.data.datasets import ImageFolder

PADDING_MODE = "reflection"  # the default of padding_mode=, read by the similarity-aligned copy


def warp_scores(result: STNOutput) -> tuple[Tensor, str]:
    """Per-image score ``[N]`` (lower = better) and its name: flow smoothness where the
    congealer has a flow stage, else ``-log`` of the similarity scale (see module docstring)."""
    if result.flow is not None:
        return flow_smoothness_scores(result.flow, kind="flow"), "flow_tv"
    linear = result.similarity_matrix[:, :, :2]
    scale = torch.linalg.det(linear).abs().sqrt()
    return -torch.log(scale), "neg_log_similarity_scale"


def _names(dataset: ImageFolder, indices: list[int]) -> list[Path]:
    return [dataset.files[i].relative_to(dataset.root).with_suffix(".png") for i in indices]


def _similarity_grid(result: STNOutput, size: int) -> Tensor:
    """The grid the aligned copy is sampled with: the similarity stage's, else the full warp."""
    if result.similarity_matrix is None:
        return result.grid
    theta = result.similarity_matrix
    return F.affine_grid(theta, [theta.shape[0], 3, size, size], align_corners=False)


@torch.no_grad()
def preprocess_folder(
    congealer: Congealer,
    root: str | Path,
    out: str | Path,
    keep: float = 0.9,
    size: int = 256,
    load_size: int | None = None,
    batch_size: int = 32,
    cluster: int | None = None,
    flips: bool | None = None,
    iters: int | None = None,
    padding_mode: str = PADDING_MODE,
    device: torch.device | str = "cpu",
    square: str = "crop",
    max_out_of_bounds: float | None = 0.025,
    min_effective_resolution: int | None = None,
) -> dict[str, Path]:
    """Rank the images of the folder ``root`` by warp quality, filter them, write ``ranking.csv``
    and the kept images aligned (module docstring).

    Two passes: the first scores every image and keeps only its similarity matrix; the second
    reloads the kept images and warps them (re-running the congealer only when it has no
    similarity stage), so memory does not grow with the dataset.
    """
    if not 0 < keep <= 1:
        raise ValueError(f"keep is the fraction of images to keep, in (0, 1]; got {keep}")
    refuse_ignored_options(congealer, cluster, flips, iters)
    if padding_mode != PADDING_MODE and not has_similarity_stage(congealer):
        raise ValueError(
            f"padding_mode={padding_mode} is ignored because this flow-only congealer writes its "
            "own full warp, not a similarity-aligned copy; drop it, or pass a congealer with a "
            "similarity stage"
        )
    dataset = ImageFolder(root, load_size or size, square=square)
    out = Path(out)
    congealer = congealer.to(device)

    def run(batch: Tensor) -> STNOutput:
        return congealer(batch, cluster=cluster, output_size=size, iters=iters, flips=flips)

    scores, matrices, outside, effective, score_name = [], [], [], [], ""
    for start, batch in zip(
        range(0, len(dataset), batch_size),
        DataLoader(dataset, batch_size=batch_size, shuffle=False),
        strict=True,
    ):
        result = run(batch.to(device))
        batch_scores, score_name = warp_scores(result)
        scores.append(batch_scores.cpu())
        hw = torch.tensor(
            [dataset.image_size(i) for i in range(start, start + batch.shape[0])], dtype=torch.float
        )
        content = hw if square == "border_pad" else None
        outside.append(out_of_bounds_fraction(_similarity_grid(result, size).cpu(), content))
        side = hw.max(1).values if square == "border_pad" else hw.min(1).values
        if result.similarity_matrix is not None:
            matrices.append(result.similarity_matrix.cpu())
            linear = result.similarity_matrix[:, :, :2].cpu()
            side = side * torch.linalg.det(linear).abs().sqrt()
        effective.append(side)
    scores_all, outside_all = torch.cat(scores), torch.cat(outside)
    effective_all = torch.cat(effective)
    order = rank_by_smoothness(scores_all).tolist()
    num_best = max(1, round(keep * len(dataset)))
    passes = torch.ones(len(dataset), dtype=torch.bool)
    if max_out_of_bounds is not None:
        passes &= outside_all <= max_out_of_bounds
    if min_effective_resolution is not None:
        passes &= effective_all >= min_effective_resolution
    kept = sorted(i for i in order[:num_best] if passes[i])
    if not kept:
        raise ValueError(
            f"none of the best {num_best} images passes the filters (at most "
            f"{max_out_of_bounds} of a crop beyond the photo, crops of at least "
            f"{min_effective_resolution} photo pixels); raise max_out_of_bounds, lower "
            "min_effective_resolution or set them to null"
        )
    matrix_all = torch.cat(matrices) if matrices else None

    subset = DataLoader(Subset(dataset, kept), batch_size=batch_size, shuffle=False)
    for start, batch in zip(range(0, len(kept), batch_size), subset, strict=True):
        batch = batch.to(device)
        indices = kept[start : start + batch.shape[0]]
        if matrix_all is None:
            aligned = run(batch).image
        else:
            theta = matrix_all[indices].to(batch)
            grid = F.affine_grid(theta, [batch.shape[0], 3, size, size], align_corners=False)
            aligned = warp(batch, grid, padding_mode)
        for name, image in zip(_names(dataset, indices), aligned.cpu(), strict=True):
            save_png(image, out / "aligned" / name)

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        ["file", f"score_{score_name}", "out_of_bounds", "effective_resolution", "kept"]
    )
    kept_set = set(kept)
    for index in order:
        name = dataset.files[index].relative_to(dataset.root).as_posix()
        writer.writerow([
            name, f"{scores_all[index].item():.6g}", f"{outside_all[index].item():.4g}",
            f"{effective_all[index].item():.4g}", int(index in kept_set),
        ])  # fmt: skip
    atomic_write_bytes(buffer.getvalue().encode(), out / "ranking.csv")
    return {"ranking": out / "ranking.csv", "aligned": out / "aligned"}
