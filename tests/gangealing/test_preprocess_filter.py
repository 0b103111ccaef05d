"""The dataset filters of ``gangealing.preprocess`` (thesis Sec. 4.4.3; official
``applications/congeal_dataset.py``): out-of-bounds crops, low-resolution crops, border padding.

``fixtures/official_oob_io.safetensors`` was made outside the repository by running the official
``check_if_warp_exceeds_image_boundaries`` (wpeebles/gangealing,
``models/spatial_transformers/warping_heads.py``, the function body taken verbatim from a fetched
mirror) on 24 random similarity grids at 32 px (rotation within +-0.5 rad, reverse scale
0.3-1.0, shifts within +-0.2), once with random photo sizes (120-200 px, one image per call, as
``congeal_dataset.py`` runs it) and once without (``image_bounds=None``), threshold 0.025.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from gangealing.apps.correspondence import out_of_bounds_fraction
from gangealing.apps.preprocess import preprocess_folder
from gangealing.data.datasets import ImageFolder
from tests.gangealing.test_applications import _congealer

FIXTURES = Path(__file__).parent / "fixtures"


def test_out_of_bounds_matches_the_official_check():
    io = load_file(FIXTURES / "official_oob_io.safetensors")
    size = int(io["size"])
    theta = io["theta"]
    grid = F.affine_grid(theta, [theta.shape[0], 3, size, size], align_corners=False)
    with_bounds = out_of_bounds_fraction(grid, io["image_hw"]) > 0.025
    square = out_of_bounds_fraction(grid) > 0.025
    assert torch.equal(with_bounds, io["oob_bounds"].bool())
    assert torch.equal(square, io["oob_square"].bool())
    assert 0 < int(io["oob_bounds"].sum()) < theta.shape[0]  # the fixture discriminates


def test_out_of_bounds_fraction_of_known_warps():
    eye = torch.eye(2, 3)[None]
    identity = F.affine_grid(eye, [1, 3, 8, 8], align_corners=False)
    assert float(out_of_bounds_fraction(identity)) == 0.0
    zoom_out = F.affine_grid(2 * eye, [1, 3, 8, 8], align_corners=False)
    assert float(out_of_bounds_fraction(zoom_out)) == 0.5  # |2u| > 7/8 for 4 of 8 columns
    # a 2:1 photo padded to a square: rows outside its middle half are beyond the photo
    hw = torch.tensor([[50.0, 100.0]])
    assert float(out_of_bounds_fraction(identity, hw)) == 0.5


def test_border_pad_keeps_the_whole_photo_and_repeats_its_edges(tmp_path):
    photo = np.zeros((20, 40, 3), dtype=np.uint8)
    photo[0, :] = (255, 0, 0)  # top row red
    photo[-1, :] = (0, 0, 255)  # bottom row blue
    Image.fromarray(photo).save(tmp_path / "wide.png")
    folder = ImageFolder(tmp_path, 40, square="border_pad")
    image = folder[0]
    assert folder.image_size(0) == (20, 40)
    assert image.shape == (3, 40, 40)
    torch.testing.assert_close(
        image[:, :10], torch.tensor([1.0, -1, -1]).view(3, 1, 1).expand(3, 10, 40)
    )
    torch.testing.assert_close(
        image[:, -10:], torch.tensor([-1.0, -1, 1]).view(3, 1, 1).expand(3, 10, 40)
    )
    with pytest.raises(ValueError, match="square='pad'; choose one of crop, border_pad"):
        ImageFolder(tmp_path, 40, square="pad")


@pytest.fixture
def photos(tmp_path):
    """Four photos, two square and two 2:1 landscapes, with content everywhere."""
    gen = np.random.default_rng(0)
    root = tmp_path / "photos"
    root.mkdir()
    for i, (h, w) in enumerate([(64, 64), (64, 64), (40, 80), (40, 80)]):
        Image.fromarray(gen.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / f"{i}.png")
    return root


def _rows(paths) -> dict[str, dict[str, str]]:
    return {row["file"]: row for row in csv.DictReader(paths["ranking"].open())}


def test_crops_beyond_the_photo_are_dropped_as_the_official_filter_does(tmp_path, photos):
    inside = _congealer("similarity", log_scale=math.log(0.6))  # a zoom into the middle
    paths = preprocess_folder(inside, photos, tmp_path / "a", keep=1.0, size=16)
    assert [r["kept"] for r in _rows(paths).values()] == ["1"] * 4
    # padded landscapes: the same crop reaches into the padding above and below the photo
    paths = preprocess_folder(
        inside, photos, tmp_path / "b", keep=1.0, size=16, square="border_pad"
    )
    rows = _rows(paths)
    assert {f: r["kept"] for f, r in rows.items()} == {"0.png": "1", "1.png": "1",
                                                      "2.png": "0", "3.png": "0"}  # fmt: skip
    assert float(rows["2.png"]["out_of_bounds"]) > 0.025
    assert sorted(p.name for p in paths["aligned"].glob("*.png")) == ["0.png", "1.png"]
    paths = preprocess_folder(
        inside, photos, tmp_path / "c", keep=1.0, size=16, square="border_pad",
        max_out_of_bounds=None,
    )  # fmt: skip
    assert [r["kept"] for r in _rows(paths).values()] == ["1"] * 4


def test_low_resolution_crops_are_dropped(tmp_path, photos):
    """Effective resolution = reverse scale x square side in photo pixels: 0.6 x 64 = 38.4 for
    the square photos, 0.6 x 40 = 24 for the centre crops of the landscapes."""
    congealer = _congealer("similarity", log_scale=math.log(0.6))
    paths = preprocess_folder(
        congealer, photos, tmp_path / "a", keep=1.0, size=16, min_effective_resolution=30
    )
    rows = _rows(paths)
    assert float(rows["0.png"]["effective_resolution"]) == pytest.approx(38.4, abs=1e-3)
    assert float(rows["2.png"]["effective_resolution"]) == pytest.approx(24.0, abs=1e-3)
    assert {f: r["kept"] for f, r in rows.items()} == {"0.png": "1", "1.png": "1",
                                                      "2.png": "0", "3.png": "0"}  # fmt: skip
    with pytest.raises(ValueError, match="none of the best 4 images passes the filters"):
        preprocess_folder(
            congealer, photos, tmp_path / "b", keep=1.0, size=16, min_effective_resolution=100
        )


def test_preprocess_filter_options_are_checked(cli_main, tmp_path, photos):
    code, err = cli_main(
        "gangealing.preprocess", f"ckpt={tmp_path}", f"data.root={photos}", "max_out_of_bounds=2"
    )
    assert code == 2 and err.startswith("error: max_out_of_bounds=2")
