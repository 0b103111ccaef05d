"""Aligning real images with a trained congealer (thesis Sec. 4.4.1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from common.checkpoint import atomic_save, safe_load
from common.data.images import to_uint8
from gangealing.align.congealer import Congealer
from gangealing.apps.congeal import congeal_folder
from gangealing.data.synthetic import SimilarityWarpDataset, write_image_folder
from gangealing.stylegan2.networks import Generator, save_generator
from tests.gangealing.test_gangealing import TINY_G, tiny_module
from tests.integration.conftest import run_cli


def _congealer_file(tmp_path, num_modes: int = 1, shift: float = 0.0):
    torch.manual_seed(0)
    save_generator(tmp_path / "g.pt", Generator(**TINY_G))
    module = tiny_module(tmp_path / "g.pt", f"num_modes={num_modes}")
    with torch.no_grad():  # a known warp: the EMA similarity head shifts by `shift` (normalised)
        for stn in module.stn_ema.module:
            stn.similarity.head[-1].bias.copy_(torch.tensor([0.0, 0.0, shift, 0.0]))
    atomic_save(module.export(), tmp_path / "run" / "congealer.pt")
    return tmp_path / "run"


def test_fresh_congealer_is_the_identity_at_any_output_size(tmp_path):
    congealer = Congealer.load(_congealer_file(tmp_path))
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    out = congealer(images, output_size=32)
    torch.testing.assert_close(out.image, images, atol=1e-5, rtol=0)
    assert out.image.shape == (2, 3, 32, 32) and out.grid.shape == (2, 32, 32, 2)
    assert congealer(images).image.shape == (2, 3, 16, 16)  # default: training resolution


def test_known_shift_moves_the_content(tmp_path):
    congealer = Congealer.load(_congealer_file(tmp_path, shift=0.25))
    images = torch.zeros(1, 3, 32, 32) - 1
    images[..., 16] = 1.0  # a bright column at x = 16
    out = congealer(images, output_size=32).image
    # the reverse grid samples x + 0.25 * 16 px: the column appears 4 px to the left
    assert out[0, 0, 10].argmax() == 12


def test_congeal_folder_writes_aligned_images_average_target_and_warps(tmp_path):
    congealer = Congealer.load(_congealer_file(tmp_path))
    folder = write_image_folder(SimilarityWarpDataset("astronaut", 16, 5), tmp_path / "data")
    paths = congeal_folder(congealer, folder, tmp_path / "out", size=16, batch_size=2)
    aligned = sorted(paths["aligned"].glob("*.png"))
    assert len(aligned) == 5
    stack = np.stack([np.asarray(Image.open(p), dtype=np.float64) for p in aligned])
    average = np.asarray(Image.open(paths["average"]), dtype=np.float64)
    assert np.abs(stack.mean(0) - average).max() <= 1.0  # uint8 rounding
    warps = safe_load(paths["warps"])
    assert warps["grids"].shape == (5, 16, 16, 2) and len(warps["files"]) == 5
    # the target mode G(c) the images were aligned to, beside the average (TINY_G is 16 px)
    target = np.asarray(Image.open(paths["target"]), dtype=np.float64)
    expected = to_uint8(congealer.target_images())[0].astype(np.float64)
    assert target.shape == (16, 16, 3) and np.abs(target - expected).max() <= 1.0


def test_cli_and_errors(tmp_path):
    run = _congealer_file(tmp_path)
    folder = write_image_folder(SimilarityWarpDataset("astronaut", 16, 3), tmp_path / "data")
    out = run_cli(
        "gangealing.congeal",
        f"ckpt={run}",
        f"data.root={folder}",
        "size=16",
        f"out={tmp_path / 'out'}",
        cwd=tmp_path,
    ).stdout
    assert "average.png" in out and (tmp_path / "out" / "average.png").is_file()
    assert "target mode" in out and (tmp_path / "out" / "target.png").is_file()

    with pytest.raises(FileNotFoundError, match="congealer.pt file it wrote"):
        Congealer.load(tmp_path / "missing")
    with pytest.raises(ValueError, match="g.pt is a StyleGAN2 checkpoint, not a congealer; use"):
        Congealer.load(tmp_path / "g.pt")
    atomic_save({"state_dict": {}}, tmp_path / "x.ckpt")
    with pytest.raises(ValueError, match="Lightning training checkpoint"):
        Congealer.load(tmp_path / "x.ckpt")
    congealer = Congealer.load(run)
    with pytest.raises(ValueError, match="convert grayscale or RGBA"):
        congealer(torch.zeros(1, 4, 16, 16))
    two = Congealer.load(_congealer_file(tmp_path / "k2", num_modes=2))
    with pytest.raises(ValueError, match="pass cluster="):
        two(torch.zeros(1, 3, 16, 16))
    assert two(torch.zeros(1, 3, 16, 16), cluster=1).image.shape == (1, 3, 16, 16)


def test_a_file_of_the_wrong_kind_is_named_in_one_short_line(tmp_path, cli_main):
    """Each GANgealing loader handed another kind of file says which kind it found and which
    command and key take it, in under 200 characters (one ``error:`` line in a command)."""
    from safetensors.torch import save_file

    from gangealing.stylegan2.networks import load_generator

    congealer = _congealer_file(tmp_path) / "congealer.pt"
    atomic_save({"x_embedder.proj.weight": torch.zeros(2, 2)}, tmp_path / "ema.pt")
    save_file({"w": torch.zeros(1)}, tmp_path / "gpt.safetensors", metadata={"format": "gpt/1"})
    cases = [
        (Congealer.load, "g.pt", "a StyleGAN2 checkpoint", "gangealing.train generator="),
        (Congealer.load, "ema.pt", "a DiT state dict", "diffusion_transformer.sample ckpt="),
        (Congealer.load, "gpt.safetensors", "a G.pt export", "gpt_checkpoints.evaluate ckpt="),
        (load_generator, "ema.pt", "a DiT state dict", "diffusion_transformer.sample ckpt="),
        (load_generator, "gpt.safetensors", "a G.pt export", "gpt_checkpoints.evaluate ckpt="),
        (load_generator, congealer, "a GANgealing congealer", "gangealing.congeal ckpt="),
    ]
    for load, name, kind, use in cases:
        with pytest.raises(ValueError) as err:
            load(tmp_path / name)
        message = str(err.value)
        assert len(message) < 200 and kind in message and use in message, message

    code, err = cli_main("gangealing.train", f"generator={congealer}")
    assert code == 2 and err.count("error:") == 1 and "Traceback" not in err
    assert "congealer.pt is a GANgealing congealer, not a StyleGAN2 generator; use it" in err
    code, err = cli_main("gangealing.congeal", f"ckpt={tmp_path / 'g.pt'}", f"data.root={tmp_path}")
    assert code == 2 and err.count("error:") == 1 and "generator=<file>" in err
