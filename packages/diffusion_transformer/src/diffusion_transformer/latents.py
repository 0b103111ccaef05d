"""VAE latent shards of an image folder (fast-DiT style), written once for fast training.

Each image is ADM-center-cropped, encoded together with its horizontal flip, and stored as
``latents [n, 2, C, h, w]`` + ``labels [n]`` (+ ``crops [n, 3, R, R]`` uint8 images with
``crops=true``, for REPA's encoder) in shards of ``shard_size`` images
(``shard_00000.safetensors``, ``shard_00001.safetensors``, ...), written atomically;
``manifest.json`` is written last. A killed job restarted with the same command keeps the
finished shards and continues. Unreadable images are skipped and listed in the manifest.
``data.LatentShardDataset`` reads the result.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors import safe_open
from safetensors.torch import save
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from common.checkpoint import atomic_write_bytes, write_json
from common.devices import pick_device
from common.errors import one_line
from diffusion_transformer.data import ImageFolderDataset
from diffusion_transformer.vae import build_vae


class _TryLoad(Dataset):
    """Yields ``(image or None, label, index, error)`` so that bad files are skipped, not fatal."""

    def __init__(self, folder: ImageFolderDataset) -> None:
        self.folder = folder

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, i: int):
        try:
            return self.folder.load(i), self.folder.files[i][1], i, None
        except OSError as err:  # common.errors.FileReadError: names the file and the reason
            return None, -1, i, one_line(err)


def _collate(items):
    good = [it for it in items if it[0] is not None]
    images = torch.stack([it[0] for it in good]) if good else None
    labels = torch.tensor([it[1] for it in good], dtype=torch.long)
    errors = [it[3] for it in items if it[3] is not None]
    return images, labels, errors


def _shard_complete(path: Path) -> int | None:
    """Number of images in a finished shard, or None when absent/unreadable."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.get_slice("labels").get_shape()[0]
    except Exception:  # a truncated file from a killed job: redo it
        return None


#: What shapes the latents: a rerun into the same ``out`` (to finish a killed job) must keep them.
SETTINGS = ("data.root", "vae", "image_size", "scale", "dtype", "seed", "shard_size", "crops")


def _settings(cfg: DictConfig) -> dict:
    paths = ("data.root", "vae")
    return {k: str(Path(cfg.data.root if k == "data.root" else cfg.vae).resolve()) if k in paths
            else OmegaConf.select(cfg, k) for k in SETTINGS}  # fmt: skip


def _check_settings(out: Path, settings: dict) -> None:
    """Refuse a rerun whose settings differ from those ``out/settings.json`` recorded when the
    extraction in ``out`` started: its finished shards are kept, so the folder would mix both."""
    path = out / "settings.json"
    if not path.is_file():
        return
    before = json.loads(path.read_text())
    changed = [k for k in SETTINGS if before.get(k) != settings[k]]
    if changed:
        now = ", ".join(f"{k}={settings[k]}" for k in changed)
        was = ", ".join(f"{k}={before.get(k)}" for k in changed)
        raise ValueError(
            f"{now} differs from the extraction {out} holds ({was}), whose shards a rerun keeps; "
            "drop it to finish that extraction with its settings, or pick a new out="
        )


def extract(cfg: DictConfig) -> Path:
    """The job of ``python -m diffusion_transformer.extract_latents``
    (``conf/extract_latents.yaml``); returns the path of ``manifest.json``."""
    out = Path(cfg.out)
    settings = _settings(cfg)
    _check_settings(out, settings)
    device = pick_device(cfg.device)
    folder = ImageFolderDataset(cfg.data.root, cfg.image_size)
    vae = build_vae({"path": cfg.vae, "scale": cfg.scale})
    vae.to(device)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "settings.json").is_file():  # inputs checked: this is the extraction's record
        write_json(settings, out / "settings.json")
    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[
        cfg.dtype
    ]
    shards, skipped = [], []
    n = len(folder)
    for k, start in enumerate(range(0, n, cfg.shard_size)):
        path = out / f"shard_{k:05d}.safetensors"
        done = _shard_complete(path)
        meta_path = path.with_suffix(".skipped.json")
        if done is not None:
            shards.append({"file": path.name, "num": done})
            if meta_path.is_file():
                skipped += json.loads(meta_path.read_text())
            continue
        torch.manual_seed(cfg.seed + k)  # posterior samples are reproducible per shard
        subset = Subset(_TryLoad(folder), range(start, min(start + cfg.shard_size, n)))
        loader = DataLoader(
            subset, batch_size=cfg.batch_size, num_workers=cfg.num_workers, collate_fn=_collate
        )
        latents, labels, crops, errors = [], [], [], []
        for images, y, errs in tqdm(loader, desc=f"shard {k}", disable=not cfg.progress):
            errors += errs
            if images is None:
                continue
            if cfg.crops:  # the crop itself, exactly: to_tensor's uint8 / 127.5 - 1 inverted
                crops.append(images.add(1).mul(127.5).round().to(torch.uint8))
            images = images.to(device)
            z = vae.encode(torch.cat([images, images.flip(-1)]))
            latents.append(torch.stack(z.chunk(2), dim=1).to(dtype).cpu())
            labels.append(y)
        for e in errors:
            print(f"skipped unreadable image: {e}")
        tensors = {"latents": torch.cat(latents), "labels": torch.cat(labels)}
        if cfg.crops:
            tensors["crops"] = torch.cat(crops)
        write_json(errors, meta_path, indent=None)
        atomic_write_bytes(save(tensors), path)
        shards.append({"file": path.name, "num": len(tensors["labels"])})
        skipped += errors
    manifest = {
        "format": "dit-latents-v1",
        "image_size": cfg.image_size,
        "scale": cfg.scale,
        "vae": str(cfg.vae),
        "classes": folder.classes,
        "num": sum(s["num"] for s in shards),
        "latent_shape": list(
            torch.Size(
                [
                    2,
                    vae.latent_channels,
                    cfg.image_size // vae.downsample,
                    cfg.image_size // vae.downsample,
                ]
            )
        ),
        "shards": shards,
        "skipped": skipped,
        "crops": bool(cfg.crops),
    }
    manifest_path = out / "manifest.json"
    write_json(manifest, manifest_path, indent=1)
    out = out.resolve()
    print(f"latents : {out} ({manifest['num']} images, {len(skipped)} skipped)")
    train = (
        f"python -m diffusion_transformer.train data=imagenet_latents data.root={out} "
        f"data.vae.path={cfg.vae} data.image_size={cfg.image_size} "
        f"data.latent_size={manifest['latent_shape'][-1]} data.num_classes={len(folder.classes)}"
    )
    if cfg.scale != 0.18215:
        train += f" data.vae.scale={cfg.scale}"
    print(f"next    : {train}")
    return manifest_path
