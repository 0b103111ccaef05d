"""Datasets: digits split, ADM center crop, image folders with bad files, latent shards."""

import itertools
import re

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from common.data.digits import load_digits
from common.errors import FileReadError
from diffusion_transformer.data import (
    DigitsDataModule,
    ImageFolderDataset,
    LatentShardDataset,
    center_crop_arr,
)
from diffusion_transformer.vae import build_vae


def test_digits_are_real_and_split_without_overlap():
    images, labels = load_digits()
    assert images.shape == (1797, 1, 8, 8) and images.min() == -1 and images.max() == 1
    dm = DigitsDataModule(holdout_fraction=0.2, seed=0)
    dm.setup()
    train_x, _ = dm.dataset.tensors
    held_x, held_y = dm.heldout()
    assert len(train_x) + len(held_x) == 1797 and len(held_x) == 359
    train_rows = {tuple(r) for r in train_x.flatten(1).tolist()}
    assert sum(tuple(r) in train_rows for r in held_x.flatten(1).tolist()) < 5  # duplicates only
    assert set(held_y.tolist()) == set(range(10))
    assert load_digits(16)[0].shape == (1797, 1, 16, 16)


def test_dataloader_is_endless_and_resumable():
    dm = DigitsDataModule(batch_size=32, seed=1)
    batches = list(itertools.islice(iter(dm.train_dataloader()), 50))  # > one epoch
    assert all(b[0].shape == (32, 1, 8, 8) for b in batches)


def test_center_crop_matches_adm_geometry():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 700, 3), dtype=np.uint8))
    out = center_crop_arr(img, 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8


def test_image_folder_skips_bad_files_with_a_report(tmp_path, caplog):
    for cls in ("b_class", "a_class"):
        (tmp_path / cls).mkdir()
        Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / cls / "0.png")
    (tmp_path / "a_class" / "1.png").write_bytes(b"garbage")
    ds = ImageFolderDataset(tmp_path, image_size=16)
    assert ds.classes == ["a_class", "b_class"] and len(ds) == 3
    bad = r"skipping unreadable image: cannot read the image .*1\.png \(cannot identify image"
    with pytest.warns(UserWarning, match=bad):
        x, y = ds[1]
    assert x.shape == (3, 16, 16) and y == 1 and len(ds.skipped) == 1
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (8, 8)).save(flat / "x.jpg")
    assert ImageFolderDataset(flat, 8).classes == ["all"]
    with pytest.raises(FileNotFoundError, match="set data.root"):
        ImageFolderDataset(tmp_path / "missing", 8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        ImageFolderDataset(tmp_path / "empty", 8)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"garbage")
    (broken / "b.jpg").write_bytes(b"\xff\xd8 garbage")
    with pytest.raises(ValueError, match=r"no readable image under .*broken \(2 files failed"):
        ImageFolderDataset(broken, 8)  # refused when built, before any training step


def test_latent_shards_read_lazily_across_shards(tmp_path):
    latents = torch.randn(5, 2, 4, 2, 2)
    shards = [
        {"file": "shard_00000.safetensors", "num": 3},
        {"file": "shard_00001.safetensors", "num": 2},
    ]
    save_file(
        {"latents": latents[:3], "labels": torch.tensor([0, 1, 2])}, tmp_path / shards[0]["file"]
    )
    save_file(
        {"latents": latents[3:], "labels": torch.tensor([3, 4])}, tmp_path / shards[1]["file"]
    )
    (tmp_path / "manifest.json").write_text(__import__("json").dumps({"shards": shards}))
    ds = LatentShardDataset(tmp_path)
    assert len(ds) == 5
    for i in range(5):
        x, y = ds[i]
        assert torch.equal(x, latents[i]) and y == i
    with pytest.raises(FileNotFoundError, match="extract_latents data.root=<images> vae=<"):
        LatentShardDataset(tmp_path / "nothing")
    shard = tmp_path / shards[1]["file"]
    intact = shard.read_bytes()
    fresh = LatentShardDataset(tmp_path)  # checks every shard, keeps none open
    shard.unlink()  # gone while training: one error naming it, from a worker too
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(fresh, [4]), num_workers=1)
    with pytest.raises(FileReadError, match=f"cannot read {shard} .*rerun extract_latents"):
        next(iter(loader))
    shard.write_bytes(intact[:40])  # truncated: refused when the dataset is built
    with pytest.raises(FileReadError, match=f"cannot read {shard} "):
        LatentShardDataset(tmp_path)
    (tmp_path / "manifest.json").write_text('{"shards": [{"file": "x"}]}')
    with pytest.raises(FileReadError, match=r"manifest.json \(no entry 'num'\); rerun"):
        LatentShardDataset(tmp_path)


@pytest.mark.parametrize(
    ("key", "fix"),
    [
        ("vae", "set vae=<local diffusers folder of e.g. stabilityai/sd-vae-ft-ema>$"),
        ("data.vae.path", "set data.vae.path=<.*>, or train in pixel space with data.vae=null$"),
    ],
)
def test_a_missing_vae_names_the_callers_key(tmp_path, key, fix):
    """sample, extract_latents and export_diffusers take ``vae=``; training ``data.vae.path``."""
    with pytest.raises(FileNotFoundError, match=f"no VAE at {re.escape(str(tmp_path))} .*: {fix}"):
        build_vae({"path": str(tmp_path)}, key)
    with pytest.raises(FileNotFoundError, match=f"{key} is empty: {fix}"):
        build_vae({"path": ""}, key)
