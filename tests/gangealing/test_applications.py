"""GANgealing applications (thesis Sec. 4.4.1-4.4.3) against analytic similarity warps."""

from __future__ import annotations

import csv
import json
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from common.checkpoint import atomic_save
from gangealing.align.congealer import Congealer
from gangealing.align.stn import (
    STNOutput,
    identity_grid,
    image_to_image_points,
    normalized_to_pixel,
    pixel_to_normalized,
    warp,
)
from gangealing.align.target import TargetMode
from gangealing.align.transformers import build_transformers
from gangealing.apps.correspondence import (
    dense_correspondence,
    flow_smoothness_scores,
    propagate_keypoints,
    propagate_labels,
    propagate_overlay,
    rank_by_smoothness,
    splat,
    splat_dense,
)
from gangealing.apps.preprocess import preprocess_folder, warp_scores
from gangealing.apps.propagate import load_edit
from gangealing.data.datasets import ImageFolder
from gangealing.data.synthetic import SimilarityWarpDataset, write_image_folder
from gangealing.stylegan2.networks import Generator
from tests.gangealing.test_gangealing import TINY_G
from tests.integration.conftest import run_cli

MODEL = {
    "_target_": "gangealing.align.transformers.SmallTransformers",
    "num_heads": 1,
    "input_size": 16,
    "widths": [8, 8],
    "flow_size": 4,
    "padding_mode": "reflection",
}
SETTINGS = {"padding_mode": "reflection", "iters": 1, "flips": False}


def _matrix(rotation: float, scale: float, tx: float, ty: float) -> torch.Tensor:
    """Reverse similarity [1, 2, 3] in normalised coordinates (SimilarityTransformer's form)."""
    c, s = scale * math.cos(rotation), scale * math.sin(rotation)
    return torch.tensor([[[c, -s, tx], [s, c, ty]]])


def _grid(matrix: torch.Tensor, size: int) -> torch.Tensor:
    return F.affine_grid(matrix, [matrix.shape[0], 1, size, size], align_corners=False)


def _map(points: torch.Tensor, matrix: torch.Tensor, size_from: int, size_to: int):
    """Analytic reverse map of pixel points through a normalised similarity matrix."""
    u = pixel_to_normalized(points, size_from)
    return normalized_to_pixel(u @ matrix[0, :, :2].T + matrix[0, :, 2], size_to)


def _congealer(transform="similarity", rotation=0.0, log_scale=0.0, tx=0.0, ty=0.0) -> Congealer:
    """A congealer whose similarity head outputs a known warp (the head is zero-initialised), with
    the target mode of a random tiny generator."""
    torch.manual_seed(0)
    model = {**MODEL, "transform": transform}
    target, generator = TargetMode(16, 1, cutoff=3), Generator(**TINY_G)
    congealer = Congealer(build_transformers(model), 16, SETTINGS, None, target, generator, model)
    congealer.eval()
    stn = congealer.stn[0]
    stn = stn.similarity if transform == "composed" else stn
    with torch.no_grad():
        stn.head[-1].bias.copy_(torch.tensor([rotation, log_scale, tx, ty]))
    return congealer


def _save(congealer: Congealer, path):
    atomic_save(congealer.export(), path / "congealer.pt")
    return path / "congealer.pt"


# ---------------------------------------------------------------------------- splatting


def test_splat_of_a_constant_under_the_identity_is_exact():
    values = torch.full((2, 3, 8, 8), 0.3) + torch.arange(3.0).view(1, 3, 1, 1)
    accum, weight = splat(values, identity_grid(2, 8, 8), (8, 8))
    torch.testing.assert_close(weight, torch.ones(2, 1, 8, 8), atol=1e-6, rtol=0)
    torch.testing.assert_close(accum / weight, values, atol=1e-6, rtol=0)


def test_splatted_dot_lands_at_the_analytic_pixel():
    matrix = _matrix(0.4, 0.8, 0.1, -0.15)
    values = torch.zeros(1, 1, 32, 32)
    dot = torch.tensor([[20.0, 9.0]])
    values[0, 0, 9, 20] = 1.0
    accum, _ = splat(values, _grid(matrix, 32), (48, 48))
    ys, xs = torch.meshgrid(torch.arange(48.0), torch.arange(48.0), indexing="ij")
    mass = accum[0, 0]
    centroid = torch.stack([(xs * mass).sum(), (ys * mass).sum()]) / mass.sum()
    expected = _map(dot, matrix, 32, 48)[0]
    assert (centroid - expected).norm() < 1e-3  # bilinear splatting keeps the centroid exactly
    peak = torch.tensor([mass.argmax() % 48, mass.argmax() // 48], dtype=torch.float32)
    assert (peak - expected).norm() < 1.0


def test_overlay_under_the_identity_is_plain_alpha_compositing():
    torch.manual_seed(0)
    images = torch.rand(2, 3, 8, 8) * 2 - 1
    overlay = torch.rand(4, 8, 8)
    out = propagate_overlay(images, identity_grid(2, 8, 8), overlay)
    rgb, alpha = overlay[:3] * 2 - 1, overlay[3:]
    torch.testing.assert_close(out, images * (1 - alpha) + rgb * alpha, atol=1e-5, rtol=0)


def test_magnified_overlay_has_no_holes_and_keeps_the_image_outside():
    grid = _grid(_matrix(0.3, 0.5, 0.0, 0.0), 8)  # the congealed image covers a 2x magnified crop
    images = torch.full((1, 3, 32, 32), -1.0)
    red = torch.tensor([1.0, 0.0, 0.0, 1.0]).view(4, 1, 1).expand(4, 8, 8)
    out = propagate_overlay(images, grid, red)
    inner = _map(torch.tensor([[2.0, 2.0], [5.0, 5.0]]), _matrix(0.3, 0.5, 0, 0), 8, 32)
    x0, y0 = inner.min(0).values.ceil().long().tolist()
    x1, y1 = inner.max(0).values.floor().long().tolist()
    assert (out[0, 0, y0 : y1 + 1, x0 : x1 + 1] > 0.99).all()  # interior fully covered
    assert (out[0, :, :3, :3] == -1).all()  # corners: outside the congealed view, unchanged
    _, covered = splat_dense(red[None], grid, (32, 32), supersample=1)
    assert not covered[0, 0, y0 : y1 + 1, x0 : x1 + 1].all()  # without supersampling: holes


def test_labels_under_the_identity_and_outside_the_view():
    labels = torch.randint(0, 5, (8, 8), generator=torch.Generator().manual_seed(0))
    out = propagate_labels(identity_grid(2, 8, 8), labels, (8, 8), num_classes=5)
    assert torch.equal(out, labels.expand(2, -1, -1))
    shrunk = propagate_labels(_grid(_matrix(0, 0.5, 0, 0), 8), labels, (16, 16))
    assert (shrunk[0, 0, 0] == -1) and (shrunk[0, 8, 8] >= 0)


# ---------------------------------------------------------------------------- points


def test_keypoints_follow_the_congealers_known_similarity():
    rotation, log_scale, tx, ty = 0.3, math.log(0.8), 0.1, -0.2
    congealer = _congealer("composed", rotation, log_scale, tx, ty)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    grid = congealer(images, output_size=16).grid
    points = torch.tensor([[3.0, 4.0], [8.0, 8.0], [12.5, 2.0]])
    out = propagate_keypoints(grid, points, (32, 32))
    expected = _map(points, _matrix(rotation, 0.8, tx, ty), 16, 32)
    assert out.shape == (2, 3, 2)
    assert (out - expected).norm(dim=-1).max() < 1e-3
    flipped = torch.tensor([False, True])
    permuted = propagate_keypoints(grid, points, (32, 32), flipped, permutation=[1, 0, 2])
    assert torch.equal(permuted[0], out[0]) and torch.equal(permuted[1], out[1, [1, 0, 2]])


def test_image_to_image_and_dense_correspondence_match_the_analytic_composition():
    size = 20
    ma, mb = _matrix(0.2, 0.9, 0.05, 0.0), _matrix(-0.3, 1.1, -0.1, 0.1)
    ga, gb = _grid(ma, size), _grid(mb, size)
    ys, xs = torch.meshgrid(torch.arange(size * 1.0), torch.arange(size * 1.0), indexing="ij")
    lattice = torch.stack([xs, ys], -1).reshape(-1, 2)
    ua = pixel_to_normalized(lattice, size) - ma[0, :, 2]
    congealed = ua @ torch.linalg.inv(ma[0, :, :2]).T
    expected = normalized_to_pixel(congealed @ mb[0, :, :2].T + mb[0, :, 2], size)
    coords, valid = dense_correspondence(ga, gb, chunk=150, return_valid=True)
    interior = (normalized_to_pixel(congealed, size) - (size - 1) / 2).abs().max(-1).values
    interior = interior < (size - 1) / 2 - 1  # well inside the congealed view
    error = (coords.reshape(-1, 2) - expected).norm(dim=-1)
    assert interior.sum() > 100 and error[interior].max() < 1.0
    assert valid.reshape(-1)[interior].all()
    sparse = image_to_image_points(lattice[None, :5], ga, gb)
    torch.testing.assert_close(sparse[0], coords.reshape(-1, 2)[:5])


# ---------------------------------------------------------------------------- smoothness


def test_smoothness_ranking_puts_the_noisy_flow_last():
    torch.manual_seed(0)
    grid = identity_grid(3, 16, 16)
    ys = torch.linspace(-1, 1, 16).view(1, 16, 1, 1)
    smooth = grid[1:2] + 0.05 * torch.cat([ys.expand(1, 16, 16, 1)] * 2, -1)
    noisy = grid[2:3] + 0.05 * torch.randn(1, 16, 16, 2)
    grids = torch.cat([noisy, smooth, grid[:1]])
    scores = flow_smoothness_scores(grids)
    assert rank_by_smoothness(scores).tolist() == [2, 1, 0]
    torch.testing.assert_close(flow_smoothness_scores(grids - grid, kind="flow"), scores)
    similarity = STNOutput(image=grid, grid=grid, similarity_matrix=_matrix(0, 0.5, 0, 0))
    assert warp_scores(similarity)[0].item() == pytest.approx(math.log(2.0))


# ---------------------------------------------------------------------------- CLIs and errors


@pytest.fixture
def folder(tmp_path):
    return write_image_folder(SimilarityWarpDataset("astronaut", 24, 4), tmp_path / "data")


def test_preprocess_keeps_the_smoothest_images_similarity_aligned(tmp_path, folder):
    congealer = _congealer("composed", log_scale=math.log(0.5))
    with torch.no_grad():  # an image-dependent flow, so that the scores differ
        congealer.stn[0].flow.head[-1].weight.normal_(0, 0.3)
    paths = preprocess_folder(congealer, folder, tmp_path / "pre", keep=0.5, size=16)
    rows = list(csv.DictReader(paths["ranking"].open()))
    scores = [float(row["score_flow_tv"]) for row in rows]
    assert scores == sorted(scores) and scores[0] < scores[-1]
    assert [row["kept"] for row in rows] == ["1", "1", "0", "0"]
    aligned = sorted(paths["aligned"].glob("*.png"))
    assert [p.name for p in aligned] == sorted(row["file"] for row in rows[:2])
    # similarity-aligned only: the kept image warped by the known similarity, not the flow
    image = ImageFolder(folder, 16)[int(rows[0]["file"][:6])][None]
    grid = _grid(_matrix(0, 0.5, 0, 0), 16)
    expected = ((warp(image, grid)[0] + 1) * 127.5).permute(1, 2, 0).numpy()
    written = np.asarray(Image.open(paths["aligned"] / rows[0]["file"]), dtype=np.float64)
    assert np.abs(written - expected).max() <= 1.0
    with pytest.raises(ValueError, match="fraction of images to keep"):
        preprocess_folder(congealer, folder, tmp_path / "pre", keep=1.5)


def test_edit_errors_name_the_fix(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="save it as RGBA PNG with transparency"):
        load_edit(tmp_path / "rgb.png", size=16)
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4).save(tmp_path / "l.png")
    with pytest.raises(ValueError, match="more than max_classes=10"):
        load_edit(tmp_path / "l.png", size=16, max_classes=10)
    (tmp_path / "k.json").write_text(json.dumps([[1, 2], [20, 3]]))
    with pytest.raises(ValueError, match="keypoint 1 .* lies outside the congealed image"):
        load_edit(tmp_path / "k.json", size=16)
    (tmp_path / "s.json").write_text(json.dumps({"points": [[20, 3]], "size": 32}))
    assert load_edit(tmp_path / "s.json", size=16).points.tolist() == [[9.75, 1.25]]


def test_propagate_and_preprocess_clis(tmp_path, folder):
    congealer = _save(_congealer("composed", 0.2, math.log(0.7)), tmp_path)
    overlay = np.zeros((32, 32, 4), dtype=np.uint8)
    overlay[8:24, 8:24] = (255, 0, 0, 200)
    Image.fromarray(overlay).save(tmp_path / "overlay.png")
    labels = Image.fromarray(np.kron(np.arange(4, dtype=np.uint8).reshape(2, 2), np.ones((8, 8))))
    labels.convert("L").save(tmp_path / "labels.png")
    (tmp_path / "points.json").write_text(json.dumps([[4, 4], [8, 12]]))
    common = [f"ckpt={congealer}", f"data.root={folder}", "size=16", "image_size=24"]
    jobs = {
        name: ("gangealing.propagate", *common, f"edit={tmp_path / edit}", f"out={tmp_path / name}")
        for name, edit in [("o", "overlay.png"), ("l", "labels.png"), ("k", "points.json")]
    }
    jobs["p"] = ("gangealing.preprocess", *common[:3], "keep=0.5", f"out={tmp_path / 'p'}")
    with ThreadPoolExecutor(len(jobs)) as pool:
        done = {k: pool.submit(run_cli, *args, cwd=tmp_path) for k, args in jobs.items()}
        outputs = {k: future.result().stdout for k, future in done.items()}
    assert "overlay" in outputs["o"] and len(list((tmp_path / "o/edited").glob("*.png"))) == 4
    edited = np.asarray(Image.open(tmp_path / "o/edited/000000.png"), dtype=np.float64)
    assert edited[12, 12, 0] > 190 and edited[12, 12, 1] < 60  # 78% opaque red at the centre
    label_png = Image.open(tmp_path / "l/labels/000000.png")
    assert label_png.mode == "P" and label_png.size == (24, 24)
    assert set(np.unique(np.asarray(label_png))) <= {0, 1, 2, 3, 255}
    assert len(list((tmp_path / "l/overlays").glob("*.png"))) == 4
    record = json.loads((tmp_path / "k/keypoints.json").read_text())
    assert len(record["images"]) == 4 and len(record["images"]["000000.png"]["keypoints"]) == 2
    assert (tmp_path / "k/keypoints/000000.png").is_file()
    for name in "olk":  # the edit drawn on the target mode, in congealed space
        assert Image.open(tmp_path / name / "target.png").size == (16, 16)
    rows = list(csv.reader((tmp_path / "p/ranking.csv").open()))
    assert rows[0][0] == "file" and len(rows) == 5
    assert len(list((tmp_path / "p/aligned").glob("*.png"))) == 2
