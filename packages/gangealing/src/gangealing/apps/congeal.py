"""Congeal a folder of real images (the library of ``python -m gangealing.congeal``).

Thesis Sec. 4.4.1: the trained Spatial Transformer aligns every image; the average of the
congealed images is the template on which a user draws edits (``gangealing.propagate``). Writes
``aligned/<name>.png``, ``average.png``, ``warps.pt`` (per image: the reverse grid into the
image and whether it was flipped) and, when the congealer has a learned target mode,
``target.png``: G(c), what the images were aligned to (with K modes and no ``cluster``: the K
targets side by side), as in the official training visuals.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from common.checkpoint import atomic_save
from common.data.images import save_grid, save_png, to_uint8
from gangealing.align.congealer import Congealer
from gangealing.data.datasets import ImageFolder

log = logging.getLogger(__name__)


def has_similarity_stage(congealer: Congealer) -> bool:
    """Whether the congealer's T starts with a similarity stage (a flow-only T has none)."""
    stn = congealer.stn
    return "similarity" in stn.transforms if congealer.official else stn.transform != "flow"


def refuse_ignored_options(
    congealer: Congealer, cluster: int | None, flips: bool | None, iters: int | None
) -> None:
    """Refuse test-time options this congealer would not use (``Congealer.forward``): a cluster
    it does not have, ``iters`` without a similarity stage, ``flips`` for a K-mode official T whose
    cluster classifier makes (or cannot make) the mirror choice."""
    k = congealer.num_modes
    if cluster is not None and cluster >= k:
        if k == 1:
            raise ValueError(
                f"cluster={cluster} is ignored because this congealer has a single mode (K=1); "
                "drop it, or pass a congealer trained with num_modes > 1"
            )
        raise ValueError(
            f"cluster={cluster} is not a mode of this congealer; pass cluster=<0..{k - 1}>"
        )
    if iters is not None and not has_similarity_stage(congealer):
        raise ValueError(
            f"iters={iters} is ignored because iterations re-apply the similarity stage, which "
            "this flow-only congealer does not have; drop it, or pass a congealer with one"
        )
    if k == 1 or not congealer.official:
        return
    if flips and congealer.classifier is None:
        raise ValueError(
            f"flips=true is ignored because this {k}-mode congealer has no cluster classifier, "
            "which chooses each image's mirror; drop it, or train one: python -m "
            "gangealing.cluster_classifier ckpt=<run>"
        )
    if flips is False and cluster is None and congealer.classifier is not None:
        raise ValueError(
            f"flips=false turns off the cluster classifier of this {k}-mode congealer, which "
            f"also picks each image's mode; pass cluster=<0..{k - 1}> with it, or drop flips=false"
        )


@torch.no_grad()
def congeal_folder(
    congealer: Congealer,
    root: str | Path,
    out: str | Path,
    size: int = 256,
    batch_size: int = 32,
    cluster: int | None = None,
    flips: bool | None = None,
    iters: int | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, Path]:
    """Align every image of the folder ``root`` and write the outputs to ``out`` (module
    docstring); returns their paths."""
    refuse_ignored_options(congealer, cluster, flips, iters)
    dataset = ImageFolder(root, size)
    out = Path(out)
    congealer = congealer.to(device)
    total = torch.zeros(3, size, size, dtype=torch.float64)
    names, grids, flipped = [], [], []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for start, batch in zip(range(0, len(dataset), batch_size), loader, strict=True):
        result = congealer(
            batch.to(device), cluster=cluster, output_size=size, iters=iters, flips=flips
        )
        for i, image in enumerate(result.image.cpu()):
            name = dataset.files[start + i].relative_to(dataset.root).with_suffix(".png")
            save_png(image, out / "aligned" / name)
            names.append(str(name))
        total += result.image.cpu().double().sum(0)
        grids.append(result.grid.cpu())
        flipped.append(result.flipped.cpu())
    average = (total / len(dataset)).float()
    save_png(average, out / "average.png")
    atomic_save(
        {"files": names, "grids": torch.cat(grids), "flipped": torch.cat(flipped), "size": size},
        out / "warps.pt",
    )
    paths = {"aligned": out / "aligned", "average": out / "average.png", "warps": out / "warps.pt"}
    targets = congealer.target_images()
    if targets is not None:
        if cluster is not None or congealer.num_modes == 1:
            targets = targets[cluster or 0][None]
        targets = F.interpolate(targets, size=(size, size), mode="bilinear", antialias=True)
        if len(targets) == 1:
            paths["target"] = save_png(targets[0].cpu(), out / "target.png")
        else:
            paths["target"] = save_grid(to_uint8(targets.cpu()), out / "target.png", len(targets))
    return paths
