"""PCK-Transfer (thesis Sec. 4.4.2): the metric on hand-computed cases, then the benchmarks of
``python -m gangealing.pck``: exact transfers, flips, the command and its errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

import gangealing
from common.checkpoint import atomic_save
from gangealing.align.congealer import Congealer
from gangealing.align.stn import STNOutput
from gangealing.data.datasets import (
    CUB_FLIP_PERMUTATION,
    CUB_PART_NAMES,
    bbox_threshold,
    image_threshold,
)
from gangealing.data.synthetic import SimilarityWarpDataset, all_pairs, write_image_folder
from gangealing.eval.benchmark import (
    Benchmark,
    SyntheticPairs,
    both_ways_default,
    evaluate,
    gangealing_transfer,
    permute_flipped,
    run,
)
from gangealing.eval.pck import (
    combine_pck,
    flip_keypoints,
    pck,
)
from gangealing.stylegan2.networks import Generator, save_generator
from tests.gangealing.test_congeal import _congealer_file
from tests.gangealing.test_gangealing import TINY_G, tiny_module
from tests.integration.conftest import run_cli


def _offset(errors: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets at the origin and predictions displaced along x by ``errors`` (one pair)."""
    target = torch.zeros(1, len(errors), 2)
    pred = target.clone()
    pred[0, :, 0] = torch.tensor(errors)
    return pred, target


def test_all_correct_is_100_percent():
    target = torch.rand(3, 5, 2) * 100
    result = pck(target.clone(), target, torch.ones(3, 5, dtype=torch.bool), torch.full((3,), 50.0))
    assert result["pck@0.1"] == result["pck@0.05"] == result["pck@0.01"] == 100.0
    assert result["num_visible"] == 15 and result["num_pairs"] == 3


def test_half_correct_hand_computed():
    # threshold 100 px: radii 10, 5 and 1 px; a distance equal to the radius counts as correct
    pred, target = _offset([0.0, 5.0, 20.0, 50.0])
    result = pck(pred, target, torch.ones(1, 4, dtype=torch.bool), torch.tensor([100.0]))
    assert result["pck@0.1"] == 50.0 and result["correct@0.1"] == 2
    assert result["pck@0.05"] == 50.0
    assert result["pck@0.01"] == 25.0


def test_invisible_keypoints_are_ignored():
    pred, target = _offset([0.0, 0.0, 80.0, 90.0])
    visible = torch.tensor([[True, True, False, False]])
    result = pck(pred, target, visible, torch.tensor([100.0]))
    assert result["pck@0.1"] == 100.0 and result["num_visible"] == 2


def test_keypoint_must_be_visible_in_both_images():
    pred, target = _offset([0.0, 0.0, 80.0])
    target_visible = torch.tensor([[True, True, True]])
    source_visible = torch.tensor([[True, False, False]])
    result = pck(pred, target, target_visible, 100.0, visible_source=source_visible)
    assert result["num_visible"] == 1 and result["pck@0.1"] == 100.0


def test_thresholds_are_per_pair():
    # the same 8 px error is correct under a 100 px scale (radius 10) but not under 50 (radius 5)
    target = torch.zeros(2, 1, 2)
    pred = target + torch.tensor([8.0, 0.0])
    result = pck(pred, target, torch.ones(2, 1, dtype=torch.bool), torch.tensor([100.0, 50.0]))
    assert result["pck@0.1"] == 50.0


def test_no_visible_keypoint_gives_nan_and_combine_merges_counts():
    pred, target = _offset([0.0, 30.0])
    empty = pck(pred, target, torch.zeros(1, 2, dtype=torch.bool), torch.tensor([100.0]))
    assert math.isnan(empty["pck@0.1"]) and empty["num_visible"] == 0
    full = pck(pred, target, torch.ones(1, 2, dtype=torch.bool), torch.tensor([100.0]))
    merged = combine_pck([empty, full, full])
    assert merged["pck@0.1"] == 50.0 and merged["num_visible"] == 4 and merged["num_pairs"] == 3


def test_thresholds_from_boxes_and_image_sizes():
    boxes = torch.tensor([[10.0, 20.0, 50.0, 30.0], [0.0, 0.0, 5.0, 12.0]])
    assert bbox_threshold(boxes).tolist() == [40.0, 12.0]
    assert image_threshold([[256, 200], [100, 300]]).tolist() == [256.0, 300.0]
    with pytest.raises(ValueError, match=r"\(x1, y1, x2, y2\)"):
        bbox_threshold([[10.0, 0.0, 5.0, 4.0]])


def test_shape_errors_say_what_is_expected():
    with pytest.raises(ValueError, match=r"\[N, K, 2\]"):
        pck(torch.zeros(2, 3, 2), torch.zeros(2, 4, 2), torch.ones(2, 3, dtype=torch.bool), 1.0)
    with pytest.raises(ValueError, match=r"thresholds must be \[N\]"):
        pck(torch.zeros(2, 3, 2), torch.zeros(2, 3, 2), torch.ones(2, 3, dtype=torch.bool), [1.0])


def test_flip_mirrors_pixel_centres_and_matches_image_flip():
    image = torch.zeros(1, 6, 10)
    image[0, 2, 3] = 1.0
    points = torch.tensor([[[3.0, 2.0]]])
    flipped, _ = flip_keypoints(points, torch.ones(1, 1, dtype=torch.bool), width=10)
    x, y = flipped[0, 0].long().tolist()
    assert torch.flip(image, dims=[-1])[0, y, x] == 1.0
    assert flipped[0, 0].tolist() == [6.0, 2.0]


def test_flip_with_cub_permutation_is_an_involution():
    points = torch.rand(4, 15, 2) * 64
    visible = torch.rand(4, 15) > 0.3
    once, once_visible = flip_keypoints(points, visible, 64, CUB_FLIP_PERMUTATION)
    twice, twice_visible = flip_keypoints(once, once_visible, 64, CUB_FLIP_PERMUTATION)
    torch.testing.assert_close(twice, points)
    assert torch.equal(twice_visible, visible)
    left_eye, right_eye = CUB_PART_NAMES.index("left eye"), CUB_PART_NAMES.index("right eye")
    assert once_visible[:, right_eye].tolist() == visible[:, left_eye].tolist()
    assert once[:, right_eye, 0].tolist() == (63 - points[:, left_eye, 0]).tolist()


def test_flip_rejects_a_non_permutation():
    with pytest.raises(ValueError, match="permutation must reorder"):
        flip_keypoints(torch.zeros(1, 3, 2), torch.ones(1, 3, dtype=torch.bool), 8, [0, 0, 1])


# ---------------------------------------------------------------------------- benchmarks

CONF = Path(gangealing.__file__).parent / "conf" / "pck.yaml"


def _config(**overrides):
    cfg = OmegaConf.load(CONF)
    cfg.pop("hydra")  # what @hydra.main hands the entry point
    return OmegaConf.merge(cfg, OmegaConf.create(overrides))


def _grids(thetas: torch.Tensor, size: int) -> torch.Tensor:
    return F.affine_grid(thetas, [thetas.shape[0], 3, size, size], align_corners=False)


class OracleCongealer(nn.Module):
    """A perfect Spatial Transformer: looks each image up among known ones and returns the
    ground-truth reverse warp from the canonical frame into it (``alignment_thetas``)."""

    num_modes = 1
    size = 32  # where transfer=official predicts its grids

    def __init__(self, images: torch.Tensor, thetas: torch.Tensor) -> None:
        super().__init__()
        self.images, self.thetas = images, thetas

    def forward(self, images, cluster=None, output_size=None, iters=1, flips=False) -> STNOutput:
        distance = torch.cdist(images.flatten(1), self.images.flatten(1))
        index = distance.argmin(1)
        size = output_size or images.shape[-1]
        grid = _grids(self.thetas[index], size)
        flipped = torch.zeros(len(images), dtype=torch.bool)
        return STNOutput(image=images, grid=grid, flipped=flipped)


@pytest.fixture
def warps():
    return SimilarityWarpDataset("astronaut", size=32, num_images=6, max_rotation_deg=30, seed=3)


def test_ground_truth_warps_transfer_every_keypoint_exactly(warps):
    pairs = all_pairs(len(warps))
    a, b = (torch.tensor(i) for i in zip(*pairs, strict=True))
    grids = _grids(warps.alignment_thetas, 32)
    none = torch.zeros(len(pairs), dtype=torch.bool)
    out_a = STNOutput(image=warps.images[a], grid=grids[a], flipped=none)
    out_b = STNOutput(image=warps.images[b], grid=grids[b], flipped=none)
    pred, visible = gangealing_transfer(warps.keypoints[a], warps.visible[a], out_a, out_b, 32, 32)
    torch.testing.assert_close(pred, warps.ground_truth_transfer(a, b), atol=1e-3, rtol=0)
    result = pck(pred, warps.keypoints[b], visible & warps.visible[b], 32.0, alpha=[0.01])
    assert result["pck@0.01"] == 100.0 and result["num_visible"] > 0.8 * len(pairs) * 12


def test_oracle_congealer_scores_100_through_the_cli_code_path(warps, tmp_path):
    write_image_folder(warps, tmp_path / "data")
    pairs = SyntheticPairs(tmp_path / "data", size=None)
    loaded = torch.stack([pairs.load(i)["image"] for i in range(len(warps))])
    bench = Benchmark("synthetic", pairs, list(pairs.pairs), lambda k: loaded[k], None)
    oracle = OracleCongealer(loaded, warps.alignment_thetas)
    ours = evaluate(bench, "gangealing", oracle, alphas=[0.01], batch_size=7)
    assert ours["pck@0.01"] == 100.0 and ours["num_pairs"] == 30
    identity = evaluate(bench, "none", alphas=[0.01])
    assert identity["num_visible"] == ours["num_visible"] and identity["pck@0.01"] < 50
    # the released code's nearest-pixel transfer: within a pixel, so not exact at alpha 0.01
    official = evaluate(
        bench, "gangealing", oracle, [0.05, 0.01], batch_size=7, transfer="official"
    )
    assert official["pck@0.05"] > 95 and official["pck@0.01"] < 90
    with pytest.raises(ValueError, match="transfer='nearest'; choose one of exact, official"):
        evaluate(bench, "gangealing", oracle, [0.01], transfer="nearest")
    # both ways (the official CUB protocol): every pair also B -> A, twice the keypoints
    both = evaluate(bench, "gangealing", oracle, alphas=[0.01], batch_size=7, both_ways=True)
    assert both["pck@0.01"] == 100.0 and both["num_pairs"] == 30 and both["both_ways"]
    assert both["num_visible"] == 2 * ours["num_visible"]  # all ordered pairs: symmetric counts
    none_both = evaluate(bench, "none", alphas=[0.01], both_ways=True)
    assert none_both["num_visible"] == both["num_visible"]
    assert both_ways_default("cub", None) and not both_ways_default("spair", None)
    assert not both_ways_default("cub", False) and both_ways_default("synthetic", True)
    spair = Benchmark("spair", pairs, list(pairs.pairs), lambda k: loaded[k], None)
    with pytest.raises(ValueError, match="evaluates its fixed pairs one way: pass both_ways=false"):
        evaluate(spair, "none", alphas=[0.01], both_ways=True)


def test_flipped_target_needs_the_left_right_permutation(warps):
    """Image B' is B mirrored, its keypoints relabelled by ``perm`` (left <-> right). A perfect
    STN aligns B' through the mirror (grid with negated x, ``flipped=True``); transfers land on
    the mirrored parts and only the permutation of Sec. 4.4.2 makes them correct."""
    perm = [1, 0, 3, 2, 5, 4, 6, 7, 8, 9, 11, 10]
    n = len(warps) - 1
    a, b = torch.arange(n), torch.arange(1, n + 1)
    grids = _grids(warps.alignment_thetas, 32)
    mirrored_kps, mirrored_vis = flip_keypoints(warps.keypoints[b], warps.visible[b], 32, perm)
    out_a = STNOutput(image=warps.images[a], grid=grids[a], flipped=torch.zeros(n, dtype=bool))
    mirrored_grid = grids[b] * torch.tensor([-1.0, 1.0])
    out_b = STNOutput(image=warps.images[b].flip(-1), grid=mirrored_grid, flipped=torch.ones(n) > 0)
    scores = {}
    for name, permutation in (("with", perm), ("without", None)):
        pred, vis_a = gangealing_transfer(
            warps.keypoints[a], warps.visible[a], out_a, out_b, 32, 32, permutation
        )
        scores[name] = pck(pred, mirrored_kps, vis_a & mirrored_vis, 32.0, alpha=[0.01])
    assert scores["with"]["pck@0.01"] == 100.0
    assert scores["without"]["pck@0.01"] < 60.0
    # both flipped (or neither): no permutation
    same = torch.ones(n, dtype=torch.bool)
    pred, _ = permute_flipped(mirrored_kps, mirrored_vis, same, same, perm)
    assert torch.equal(pred, mirrored_kps)
    with pytest.raises(ValueError, match="one entry per keypoint"):
        permute_flipped(mirrored_kps, mirrored_vis, same, ~same, [0, 1])


def test_cli_writes_pck_json_for_every_method(tmp_path):
    congealer = _congealer_file(tmp_path)
    data = tmp_path / "data"
    write_image_folder(SimilarityWarpDataset("astronaut", 16, 4, seed=1), data)
    run_cli(
        "gangealing.pck",
        "-m",
        "method=gangealing,congealing,none",
        f"ckpt={congealer}",
        "benchmark=synthetic",
        f"data.root={data}",
        "size=16",
        "max_pairs=5",
        "congealing.steps_per_stage=3",
        "congealing.size=16",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        cwd=tmp_path,
    )
    for job, method in enumerate(("gangealing", "congealing", "none")):
        record = json.loads((tmp_path / "sweep" / str(job) / "pck.json").read_text())
        assert record["method"] == method and record["benchmark"] == "synthetic"
        assert {"pck@0.1", "pck@0.05", "pck@0.01", "num_visible"} <= set(record)
        assert record["num_pairs"] == 5 and record["config"]["max_pairs"] == 5
        assert 0.0 <= record["pck@0.1"] <= 100.0


def test_errors_name_the_problem_and_the_fix(tmp_path):
    data = tmp_path / "data"
    write_image_folder(SimilarityWarpDataset("astronaut", 16, 3), data)
    base = {"benchmark": "synthetic", "data": {"root": str(data)}, "size": 16}
    base["out"] = str(tmp_path / "o")
    with pytest.raises(ValueError, match="needs ckpt=<run dir"):
        run(_config(**base))
    with pytest.raises(ValueError, match="unknown benchmark='pascal': use one of spair, cub"):
        run(_config(**{**base, "benchmark": "pascal", "method": "none"}))
    with pytest.raises(ValueError, match="unknown method='sift'"):
        run(_config(**{**base, "method": "sift"}))
    with pytest.raises(ValueError, match="needs category=<name>"):
        run(_config(**{**base, "benchmark": "spair", "method": "none"}))
    with pytest.raises(FileNotFoundError, match="congealer.pt file it wrote"):
        run(_config(**{**base, "ckpt": str(tmp_path / "missing")}))
    two_modes = _congealer_file(tmp_path / "k2", num_modes=2)
    with pytest.raises(ValueError, match="pass cluster=<0..1>"):
        run(_config(**{**base, "ckpt": str(two_modes)}))
    record = run(_config(**{**base, "ckpt": str(two_modes), "cluster": 1}))
    assert record["num_pairs"] == 6 and (tmp_path / "o" / "pck.json").is_file()
    assert isinstance(Congealer.load(two_modes), Congealer)


def test_pck_module_runs_the_cli_with_iterations_and_flips_need_a_flow(tmp_path):
    """``python -m gangealing.pck`` runs the benchmark; a similarity-only congealer refuses
    ``flips=true`` with advice the command line can act on."""
    torch.manual_seed(0)
    save_generator(tmp_path / "g.pt", Generator(**TINY_G))
    module = tiny_module(tmp_path / "g.pt", "model.transform=similarity")
    atomic_save(module.export(), tmp_path / "run" / "congealer.pt")
    data = tmp_path / "data"
    write_image_folder(SimilarityWarpDataset("astronaut", 16, 3, seed=1), data)
    common = [f"ckpt={tmp_path / 'run'}", "benchmark=synthetic", f"data.root={data}", "size=16"]
    run_cli("gangealing.pck", *common, "iters=2", f"out={tmp_path / 'o'}", cwd=tmp_path)
    record = json.loads((tmp_path / "o" / "pck.json").read_text())
    assert record["config"]["iters"] == 2 and record["num_pairs"] == 6
    base = {"benchmark": "synthetic", "data": {"root": str(data)}, "size": 16}
    with pytest.raises(ValueError, match="transform='similarity' and predicts no flow: run with"):
        run(_config(**base, out=str(tmp_path / "f"), ckpt=str(tmp_path / "run"), flips=True))
