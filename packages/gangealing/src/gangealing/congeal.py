"""Congeal a folder of real images: ``python -m gangealing.congeal congealer=... images=...``.

Thesis Sec. 4.4.1: the trained Spatial Transformer aligns every image; the average of the
congealed images is the template on which a user draws edits (``gangealing.propagate``). Writes
``aligned/<name>.png``, ``average.png`` and ``warps.pt`` (per image: the reverse grid into the
image and whether it was flipped).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from common.checkpoint import atomic_save
from common.cli import hydra_main
from common.images import to_uint8
from gangealing.congealer import Congealer
from gangealing.datasets import ImageFolder

log = logging.getLogger(__name__)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def save_png(image: torch.Tensor, path: Path) -> None:
    """One ``[3, H, W]`` image in [-1, 1] as a PNG."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(image[None])[0]).save(path)


@torch.no_grad()
def congeal_folder(
    congealer: Congealer,
    images: str | Path,
    out: str | Path,
    size: int = 256,
    batch_size: int = 32,
    cluster: int | None = None,
    flips: bool | None = None,
    iters: int | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, Path]:
    """Align every image of ``images`` and write the outputs to ``out``; returns their paths."""
    dataset = ImageFolder(images, size)
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
    return {"aligned": out / "aligned", "average": out / "average.png", "warps": out / "warps.pt"}


# What makes sense for each number this command reads (common.errors.check_values).
CHECKS = {
    "size": "int>=8",
    "batch_size": "int>=1",
    "iters": "int>=1|null",
    "cluster": "int>=0|null",
}


@hydra_main("congeal", input_paths=("congealer", "images"), checks=CHECKS)
def main(cfg: DictConfig) -> None:
    congealer = Congealer.load(cfg.congealer, preset=cfg.get("preset"))
    paths = congeal_folder(
        congealer,
        cfg.images,
        cfg.out,
        size=cfg.size,
        batch_size=cfg.batch_size,
        cluster=cfg.cluster,
        flips=cfg.flips,
        iters=cfg.iters,
        device=pick_device(cfg.device),
    )
    print(f"aligned images : {paths['aligned']}")
    print(f"average image  : {paths['average']} (draw edits on it for gangealing.propagate)")
    print(f"warps          : {paths['warps']}")


if __name__ == "__main__":
    from gangealing.congeal import main as _main

    _main()
