"""``common.devices.pick_device`` and ``common.cli.translate_legacy_args`` (one helper each for
every command of the three packages)."""

from __future__ import annotations

import pytest
import torch

from common.cli import translate_legacy_args
from common.devices import pick_device


def test_pick_device():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device("auto").type == expected and pick_device(None).type == expected
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match="device='gpu0' is not a device; pass auto, cpu or cuda"):
        pick_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU; pass device=cpu or auto"):
            pick_device("cuda:1")


def test_legacy_flags_and_positionals_become_overrides_with_one_line_each(capsys):
    flags = {"--steps": "steps", "--batch-size": "batch_size"}
    args = ["runs/a", "--steps", "5", "--batch-size=8", "lr=1", "--cfg", "job", "-m"]
    out = translate_legacy_args(args, flags, ("run",), "python -m x")
    assert out == ["run=runs/a", "steps=5", "batch_size=8", "lr=1", "--cfg", "job", "-m"]
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "warning: a bare run is deprecated in python -m x; use run=runs/a",
        "warning: --steps is deprecated in python -m x; use steps=5",
        "warning: --batch-size is deprecated in python -m x; use batch_size=8",
    ]
    assert translate_legacy_args(["steps=2"], flags, ("run",)) == ["steps=2"]  # new form untouched
    assert translate_legacy_args(["--cfg", "job", "r"], flags, ("run",)) == [
        "--cfg",
        "job",
        "run=r",
    ]
    with pytest.raises(ValueError, match="--steps needs a value; pass steps=<value>"):
        translate_legacy_args(["--steps"], flags)


def test_renamed_keys_and_groups_become_their_new_spelling(capsys):
    renamed = {"gan": "model=stylegan2/{}", "gan.": "model.", "transform": "model.transform"}
    args = ["gan=paper", "gan.style_dim=16", "transform=flow", "organ=1", "model=x"]
    out = translate_legacy_args(args, renamed, (), "python -m y")
    assert out == ["model=stylegan2/paper", "model.style_dim=16", "model.transform=flow", "organ=1",
                   "model=x"]  # fmt: skip
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "warning: gan= is deprecated in python -m y; use model=stylegan2/paper"
    assert len(err) == 3


def test_an_error_from_a_data_loader_worker_is_its_own_line():
    """torch re-raises a worker's exception with the worker's traceback in the message; the one
    line a user sees is the original message (``common.errors.one_line``)."""
    from torch.utils.data import DataLoader, Dataset

    from common.errors import is_user_error, one_line

    class Unreadable(Dataset):
        def __len__(self) -> int:
            return 2

        def __getitem__(self, i):
            raise ValueError("cannot read the image x.png; remove or replace that file")

    with pytest.raises(ValueError) as err:
        next(iter(DataLoader(Unreadable(), num_workers=1)))
    assert "Original Traceback" in str(err.value)  # what torch gives
    assert is_user_error(err.value)
    assert one_line(err.value) == "cannot read the image x.png; remove or replace that file"
