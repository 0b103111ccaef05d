"""Keys a combination would ignore are refused: one ``error:`` line naming the key, exit code 2.

Covers ``congeal``, ``propagate``, ``preprocess`` and ``pck``: a cluster the congealer does not
have, ``iters`` without a similarity stage, ``flips`` a K-mode official T cannot honour, the
edit options of another kind of edit, ``padding_mode`` of a flow-only congealer, and the ``pck``
keys of another method or benchmark. The congealers are tiny random ones (the small CPU trunk)
and the released K = 2 fixture (with and without its cluster classifier).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common.checkpoint import atomic_save, safe_load
from gangealing.align.congealer import Congealer
from gangealing.align.target import TargetMode
from gangealing.align.transformers import build_transformers
from gangealing.data.synthetic import SimilarityWarpDataset, write_image_folder
from gangealing.stylegan2.networks import Generator
from tests.gangealing.test_gangealing import TINY_G

K2 = Path(__file__).parent / "fixtures" / "official_congealer_k2.pt"


def _small(transform: str, path: Path) -> Path:
    """A K = 1 congealer of the small CPU trunk at 16 px, written as ``congealer.pt``."""
    model = {
        "_target_": "gangealing.align.transformers.SmallTransformers",
        "transform": transform,
        "num_heads": 1,
        "input_size": 16,
        "widths": [8, 8],
        "flow_size": 4,
        "padding_mode": "reflection",
    }
    settings = {"padding_mode": "reflection", "iters": 1, "flips": False}
    target, generator = TargetMode(16, 1, cutoff=3), Generator(**TINY_G)
    congealer = Congealer(build_transformers(model), 16, settings, None, target, generator, model)
    atomic_save(congealer.export(), path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("ignored_keys")
    f = {"flow": _small("flow", root / "flow.pt"), "composed": _small("composed", root / "c.pt")}
    f["k2"] = K2
    blob = safe_load(K2)
    blob.pop("classifier")
    f["k2_bare"] = root / "k2_bare.pt"
    torch.save(blob, f["k2_bare"])
    f["images"] = root / "images"
    f["images"].mkdir()
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(f["images"] / "a.png")
    f["overlay"] = root / "overlay.png"
    Image.fromarray(np.zeros((16, 16, 4), np.uint8), "RGBA").save(f["overlay"])
    f["points"] = root / "points.json"
    f["points"].write_text(json.dumps([[3, 4]]))
    f["labels"] = root / "labels.png"
    Image.fromarray(np.ones((16, 16), np.uint8), "L").save(f["labels"])
    f["synthetic"] = root / "synthetic"
    write_image_folder(SimilarityWarpDataset("astronaut", 16, 2, seed=1), f["synthetic"])
    return f


ALIGN = ["data.root={images}", "size=16", "device=cpu"]
PROPAGATE = ["gangealing.propagate", "ckpt={composed}", *ALIGN]
PCK = ["gangealing.pck", "data.root={synthetic}", "size=16"]
CASES = [
    ("gangealing.congeal", "ckpt={flow}", *ALIGN, "iters=2"),
    ("gangealing.congeal", "ckpt={composed}", *ALIGN, "cluster=1"),
    ("gangealing.congeal", "ckpt={k2}", *ALIGN, "cluster=2"),
    ("gangealing.congeal", "ckpt={k2_bare}", *ALIGN, "cluster=0", "flips=true"),
    ("gangealing.congeal", "ckpt={k2}", *ALIGN, "flips=false"),
    ("gangealing.preprocess", "ckpt={flow}", *ALIGN, "padding_mode=zeros"),
    ("gangealing.preprocess", "ckpt={flow}", *ALIGN, "iters=3"),
    (*PROPAGATE, "edit={overlay}", "label_alpha=0.8"),
    (*PROPAGATE, "edit={labels}", "point_radius=4"),
    (*PROPAGATE, "edit={points}", "max_classes=10"),
    (*PROPAGATE, "edit={points}", "cluster=3"),
    (*PCK, "benchmark=synthetic", "method=none", "iters=2"),
    (*PCK, "benchmark=synthetic", "method=none", "preset=cat"),
    (*PCK, "benchmark=synthetic", "method=none", "transfer=official"),
    (*PCK, "benchmark=synthetic", "method=congealing", "device=cpu"),
    (*PCK, "benchmark=synthetic", "method=none", "category=cat"),
    (*PCK, "benchmark=synthetic", "method=none", "split=val"),
    (*PCK, "benchmark=synthetic", "method=none", "num_pairs=5"),
    (*PCK, "benchmark=synthetic", "method=none", "seed=3"),
    (*PCK, "benchmark=synthetic", "method=none", "permutation=[1,0]"),
    (*PCK, "benchmark=cub", "ckpt={composed}", "permutation=[1,0]"),
    (*PCK, "benchmark=cub", "method=none", "max_pairs=5"),
    (*PCK, "benchmark=spair", "method=none", "category=cat", "seed=3"),
    (*PCK, "benchmark=cub", "method=none", "size=null"),
    (*PCK, "benchmark=synthetic", "ckpt={flow}", "iters=2"),
]


@pytest.mark.parametrize("case", CASES, ids=[" ".join(a for a in c if "{" not in a) for c in CASES])
def test_an_ignored_key_is_refused_in_one_line(files, cli_main, case):
    module, *args = case
    key = args[-1].split("=")[0]
    code, err = cli_main(module, *(a.format(**files) for a in args))
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2, err
    assert len(errors) == 1 and f"error: {key}=" in errors[0], err
    assert "drop it" in errors[0] or "pass" in errors[0], errors[0]
    assert "Traceback" not in err


def test_the_values_that_apply_still_run(files, run_main, tmp_path):
    """The nearby accepted combination: cluster=0 of a K = 1 congealer and iters= with a
    similarity stage."""
    args = ["ckpt={composed}", *ALIGN, "cluster=0", "iters=2", f"out={tmp_path / 'out'}"]
    code, _, err = run_main("gangealing.congeal", *(a.format(**files) for a in args))
    assert code == 0, err
    assert (tmp_path / "out" / "aligned" / "a.png").is_file()
