"""The released GANgealing Spatial Transformers, sampling and cluster classifier against the
official code.

Fixtures (``tests/gangealing/fixtures/``) were made by running the official code
(wpeebles/gangealing at HEAD) on the CPU, outside this repository: its CUDA extension loaders
stubbed (their CPU branches run), the flow head's identity grid kept on the CPU, and the channel
table's 512 entries set to 32 (a tiny instance: ``max_channels=32`` here). Two
``ComposedSTN(['similarity', 'flow'], flow_size=64, supersize=128, channel_multiplier=0.125)``
(K = 1, and K = 2 with a ``ResnetClassifier(num_heads=4)``), every parameter randomised (the
zero-initialised heads too), were saved in the released checkpoint layout (``t_ema``,
``classifier``, ``args`` as an ``argparse.Namespace``) with three 128 px photos (scikit-image's
astronaut and chelsea, and the astronaut mirrored) and what the official code computes from them:
congealed images, sampling grids and residual flows for ``iters`` 1 (border padding) and 3
(reflection), at 128 px output, ``forward_with_flip`` (iters 3), the similarity stage alone, the
K = 2 outputs for every head, the classifier's logits, clusters and mirror choices, and the
outputs with ``warp_policy`` set from them (``run_flip``).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from common.checkpoint import atomic_save, checkpoint_kind, safe_load
from gangealing.align.congealer import Congealer
from gangealing.align.official_stn import OfficialClusterClassifier, OfficialComposedSTN
from gangealing.align.released import PRESETS, infer_architecture
from gangealing.align.sampling import BilinearDownsample, mipmap_warp
from gangealing.align.stn import image_to_image_points, nearest_neighbour_points
from gangealing.stylegan2.networks import Generator
from tests.gangealing.test_gangealing import TINY_G
from tests.integration.conftest import run_cli

FIXTURES = Path(__file__).parent / "fixtures"
K1, K2 = FIXTURES / "official_congealer_k1.pt", FIXTURES / "official_congealer_k2.pt"
TINY = {"flow_size": 64, "supersize": 128, "channel_multiplier": 0.125, "max_channels": 32}
# The fixtures' T: every OfficialComposedSTN argument (the class has no defaults).
ARCH = {"transforms": ["similarity", "flow"], **TINY, "num_heads": 1, "flow_downsample": 8}
TOL = {"atol": 1e-4, "rtol": 0}


@pytest.fixture(scope="module")
def io():
    return load_file(FIXTURES / "official_stn_io.safetensors")


@pytest.fixture(scope="module")
def stn1():
    t = OfficialComposedSTN(**ARCH)
    t.load_state_dict(safe_load(K1)["t_ema"], strict=True)
    return t.eval()


@pytest.fixture(scope="module")
def stn2():
    t = OfficialComposedSTN(**{**ARCH, "num_heads": 2})
    t.load_state_dict(safe_load(K2)["t_ema"], strict=True)
    return t.eval()


def test_the_architecture_is_read_from_the_tensors():
    blob = safe_load(K1)
    assert isinstance(blob["args"], argparse.Namespace)  # loaded with weights_only=True
    arch = infer_architecture(blob["t_ema"])
    assert arch == ARCH
    assert infer_architecture(safe_load(K2)["t_ema"])["num_heads"] == 2
    arch = {**ARCH, "flow_downsample": 4, "num_heads": 2}
    assert infer_architecture(OfficialComposedSTN(**arch).state_dict()) == arch
    assert checkpoint_kind({"t_ema": {}}) == "an official GANgealing congealing checkpoint"


@torch.no_grad()
@pytest.mark.parametrize(("pad", "iters"), [("border", 1), ("reflection", 3)])
def test_warps_equal_the_official_code(io, stn1, pad, iters):
    out = stn1.congeal(io["images"], iters=iters, padding_mode=pad)
    for key, value in (("image", out.image), ("grid", out.grid), ("flow", out.flow)):
        torch.testing.assert_close(value, io[f"k1_{pad}_it{iters}_{key}"], **TOL)


@torch.no_grad()
def test_high_resolution_output_and_the_similarity_stage(io, stn1):
    out = stn1.congeal(io["images"], iters=3, output_size=128)
    torch.testing.assert_close(out.image, io["k1_hires_image"], **TOL)
    x = io["images"]
    image, base = x, None
    for _it in range(3):  # the similarity stage alone, iterated on its own output
        image, _, base = stn1.stns[0](image, x, 64, "border", None, base)
    torch.testing.assert_close(image, io["k1_similarity_it3_image"], **TOL)
    torch.testing.assert_close(base, io["k1_similarity_it3_matrix"], **TOL)


@torch.no_grad()
def test_flip_inference_equals_forward_with_flip(io, stn1):
    out = stn1.congeal(io["images"], iters=3, flips=True)
    assert out.flipped.tolist() == io["k1_flip_indices"].bool().tolist() == [False, True, True]
    torch.testing.assert_close(out.image, io["k1_flip_image"], **TOL)
    torch.testing.assert_close(out.grid, io["k1_flip_grid"], **TOL)
    torch.testing.assert_close(out.flow, io["k1_flip_flow"], **TOL)


@torch.no_grad()
def test_clusters_every_head_and_classifier_routing(io, stn2):
    x = io["images"]
    out = stn2.congeal(x, padding_mode="reflection")  # every head: [N * K], image-major
    torch.testing.assert_close(out.image, io["k2_cartesian_image"], **TOL)
    torch.testing.assert_close(out.grid, io["k2_cartesian_grid"], **TOL)
    classifier = OfficialClusterClassifier(2, **TINY)
    classifier.load_state_dict(safe_load(K2)["classifier"], strict=True)
    torch.testing.assert_close(classifier(x), io["k2_logits"], **TOL)
    clusters, mirrored = classifier.assign(x)
    assert clusters.tolist() == io["k2_clusters"].tolist() == [1, 0, 0]
    assert mirrored.tolist() == io["k2_flips"].bool().tolist() == [True, False, True]
    x_in = torch.where(mirrored.view(-1, 1, 1, 1), x.flip(-1), x)
    out = stn2.congeal(x_in, iters=3, padding_mode="reflection", cluster=clusters)
    torch.testing.assert_close(out.image, io["k2_assigned_image"], **TOL)
    torch.testing.assert_close(out.grid, io["k2_assigned_grid"], **TOL)


@torch.no_grad()
def test_congealer_load_reads_released_files(io, tmp_path):
    """``Congealer.load`` on a released file: its test settings by name, the classifier used."""
    one = Congealer.load(K1)
    assert isinstance(one.stn, OfficialComposedSTN) and one.preset is None
    assert one.settings == {"padding_mode": "border", "iters": 1, "flips": True}
    out = one(io["images"], iters=3)  # flip inference is on by default for K = 1
    torch.testing.assert_close(out.image, io["k1_flip_image"], **TOL)
    torch.testing.assert_close(out.grid, io["k1_flip_grid"], **TOL)
    off = one(io["images"], iters=1, flips=False)
    torch.testing.assert_close(off.image, io["k1_border_it1_image"], **TOL)

    two = Congealer.load(K2)
    two.settings["padding_mode"] = "reflection"  # what the fixture was made with
    out = two(io["images"], iters=3)
    torch.testing.assert_close(out.image, io["k2_assigned_image"], **TOL)
    assert out.flipped.tolist() == [True, False, True]
    assert two.classify(io["images"]).tolist() == [1, 0, 0]
    mirrored = io["k2_assigned_grid"] * torch.tensor([-1.0, 1.0])  # into the original images
    torch.testing.assert_close(out.grid[0], mirrored[0], **TOL)
    torch.testing.assert_close(out.grid[1], io["k2_assigned_grid"][1], **TOL)

    shutil.copy(K1, tmp_path / "cat.pt")  # the file name selects the preset
    cat = Congealer.load(tmp_path / "cat.pt")
    assert cat.preset == "cat" and cat.settings == {
        "padding_mode": "border",
        "iters": 3,
        "flips": True,
    }
    assert Congealer.load(tmp_path / "cat.pt", preset="none").settings["iters"] == 1
    assert set(PRESETS) >= {"bicycle", "car", "cat", "celeba", "cub", "dog", "horse", "tvmonitor"}


@torch.no_grad()
@pytest.mark.parametrize("iters", [1, 3])
def test_official_keypoint_transfer_equals_transfer_points(io, stn1, iters):
    """``transfer=official`` of ``gangealing.pck``: the released code's nearest-neighbour transfer
    (fixture ``official_pck_io``: ``ComposedSTN.transfer_points`` from each image to the next)."""
    pk = load_file(FIXTURES / "official_pck_io.safetensors")
    a, b = io["images"], io["images"].roll(1, 0)
    grid_a, grid_b = (stn1.congeal(x, iters=iters).grid for x in (a, b))
    pred = nearest_neighbour_points(pk["points_a"], grid_a, grid_b, 128, 128)
    torch.testing.assert_close(pred, pk[f"transfer_it{iters}"], **TOL)
    exact = image_to_image_points(pk["points_a"], grid_a, grid_b, 128, 128)
    assert 0.2 < (exact - pred).norm(dim=-1).mean() < 2.0  # within about a pixel of the exact map


@torch.no_grad()
def test_the_target_mode_of_a_released_file_is_its_ll_output(tmp_path):
    """A released file's learned target mode (official ``DirectionInterpolator``, saved as ``ll``:
    ``lat_mean`` [1, D], ``directions`` [N, D], ``coefficients`` [K, N]; the mixing cutoff is
    ``args.inject``) with the generator ``g_ema`` that renders it. The fixture is built here: the
    K = 1 file above plus a random tiny rosinality generator (``TINY_G``) and random ``ll``
    tensors, as official ``train.py`` saves them. The official interpolator at psi = 0 gives
    ``c = lat_mean + coefficients @ directions``; the target image is g_ema at c in every W+
    layer, with its stored noise."""
    torch.manual_seed(0)
    generator = Generator(**TINY_G).eval()
    ll = {
        "lat_mean": torch.randn(1, 16),
        "directions": F.normalize(torch.randn(1, 16), dim=1),
        "coefficients": torch.randn(1, 1),
    }
    blob = safe_load(K1)
    blob.update(g_ema=generator.state_dict(), ll=ll)
    blob["args"].inject = 3
    atomic_save(blob, tmp_path / "released.pt")
    congealer = Congealer.load(tmp_path / "released.pt")
    c = ll["lat_mean"] + ll["coefficients"] @ ll["directions"]
    expected, _ = generator([c], input_is_latent=True, randomize_noise=False)
    torch.testing.assert_close(congealer.target_images(), expected)
    assert congealer.target.cutoff == 3 and congealer.target.modes().shape == (1, 16)
    assert Congealer.load(K1).target_images() is None  # no ll, no g_ema: no target


def test_wrong_files_and_presets_are_named(tmp_path):
    with pytest.raises(ValueError, match="unknown preset 'kat'; choose one of bicycle, car"):
        Congealer.load(K1, preset="kat")
    with pytest.raises(ValueError, match="preset=car is a model with 4 cluster.s., but .* has 1"):
        Congealer.load(K1, preset="car")
    blob = safe_load(K1)
    blob["args"].flow_size = 128
    atomic_save(blob, tmp_path / "edited.pt")
    with pytest.raises(ValueError, match="args say flow_size=128 but its t_ema tensors"):
        Congealer.load(tmp_path / "edited.pt")
    atomic_save({"g_ema": {"w": torch.zeros(1)}, "latent_avg": torch.zeros(1)}, tmp_path / "g.pt")
    with pytest.raises(ValueError, match="g.pt is a StyleGAN2 checkpoint, not a congealer"):
        Congealer.load(tmp_path / "g.pt")
    stn = OfficialComposedSTN(**ARCH)
    with pytest.raises(ValueError, match=r"takes 128 px square inputs, got \(64, 64\)"):
        stn.congeal(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="must be a multiple of flow_size"):
        OfficialComposedSTN(**{**ARCH, "supersize": 96})


def test_mipmap_sampling_invariants():
    """At the input's own scale the mipmap is plain bilinear sampling; a zoom-out averages
    (the output of a 4x zoom-out of fine stripes is near their mean, where plain sampling
    aliases); the tent-filter downsampling keeps a constant image constant."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    identity = F.affine_grid(torch.eye(2, 3).expand(2, 2, 3), [2, 3, 32, 32], align_corners=False)
    plain = F.grid_sample(x, identity, padding_mode="border", align_corners=False)
    torch.testing.assert_close(mipmap_warp(x, identity), plain)
    stripes = (torch.arange(64) % 2).float().view(1, 1, 1, 64).expand(1, 1, 64, 64) * 2 - 1
    zoom_out = F.affine_grid(torch.eye(2, 3)[None], [1, 1, 16, 16], align_corners=False)
    shifted = zoom_out + torch.tensor([1 / 64, 0.0])  # on pixel centres: plain sampling aliases
    assert mipmap_warp(stripes, shifted).abs().max() < 0.05
    assert F.grid_sample(stripes, shifted, align_corners=False).abs().min() > 0.99
    down = BilinearDownsample(2)(torch.full((1, 3, 16, 16), 0.7))
    assert down.shape == (1, 3, 8, 8)
    torch.testing.assert_close(down, torch.full_like(down, 0.7))


def test_congeal_command_with_a_released_model(cli_main, tmp_path):
    """``python -m gangealing.congeal ckpt=cat.pt``: the released model's settings apply."""
    from gangealing.data.synthetic import SimilarityWarpDataset, write_image_folder

    folder = write_image_folder(SimilarityWarpDataset("astronaut", 32, 3), tmp_path / "data")
    shutil.copy(K1, tmp_path / "cat.pt")
    run_cli(
        "gangealing.congeal", f"ckpt={tmp_path / 'cat.pt'}", f"data.root={folder}", "size=64",
        f"out={tmp_path / 'out'}", "device=cpu", cwd=tmp_path,
    )  # fmt: skip
    assert (tmp_path / "out" / "average.png").is_file()
    assert not (tmp_path / "out" / "target.png").exists()  # the fixture has no target mode
    warps = safe_load(tmp_path / "out" / "warps.pt")
    assert warps["grids"].shape == (3, 64, 64, 2) and warps["flipped"].dtype == torch.bool
    code, err = cli_main(
        "gangealing.congeal", f"ckpt={K1}", f"data.root={folder}", "preset=kat",
    )  # fmt: skip
    assert code == 2 and "error: unknown preset 'kat'" in err.strip().splitlines()[-1], err
    from PIL import Image

    Image.new("RGBA", (64, 64), (255, 0, 0, 128)).save(tmp_path / "edit.png")
    code, err = cli_main(
        "gangealing.propagate", f"ckpt={K2}", f"data.root={folder}",
        f"edit={tmp_path / 'edit.png'}", "size=64",
    )  # fmt: skip
    line = err.strip().splitlines()[-1]
    assert code == 2 and line.startswith("error: the congealer has 2 modes") and "cluster=" in line
