"""``common.devices.pick_device`` and ``common.errors.one_line`` (one helper each for every
command of the three packages)."""

from __future__ import annotations

import pytest
import torch

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
