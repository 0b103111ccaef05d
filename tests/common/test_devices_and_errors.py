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


class _ForeignFailure(Exception):
    """What a decoder might raise: not one of the project's error types."""


def _decode(path: str) -> None:
    from common.errors import reading

    with reading(path, what="the shard "):
        raise _ForeignFailure(f"bad header in '{path}' at byte 8")


def test_any_failure_while_reading_a_file_is_one_line_naming_it_in_a_worker_too():
    """``common.errors.reading`` turns whatever a decoder raises into one ``FileReadError`` that
    names the file once; a DataLoader worker's re-raise keeps it one line."""
    from torch.utils.data import DataLoader, Dataset

    from common.errors import FileReadError, is_user_error, one_line

    expected = (
        "cannot read the shard /d/s.safetensors (_ForeignFailure: bad header in at byte 8); "
        "replace or remove that file"
    )
    with pytest.raises(FileReadError) as err:
        _decode("/d/s.safetensors")
    assert isinstance(err.value.__cause__, _ForeignFailure)  # kept for debug=true
    assert is_user_error(err.value) and one_line(err.value) == expected

    class Shards(Dataset):
        def __len__(self) -> int:
            return 1

        def __getitem__(self, i):
            _decode("/d/s.safetensors")

    with pytest.raises(FileReadError) as err:
        next(iter(DataLoader(Shards(), num_workers=1)))
    assert "Original Traceback" in str(err.value)
    assert is_user_error(err.value) and one_line(err.value) == expected


def test_json_outputs_are_strict_json(tmp_path):
    """``common.checkpoint.write_json``, the writer of every JSON output: NaN/inf become null,
    tensors and numpy values plain numbers, the file appears atomically."""
    import json

    import numpy as np
    import torch

    from common.checkpoint import write_json

    path = write_json(
        {"pck@0.1": 50.0, "t": torch.tensor([1.5, float("nan")]), "n": np.int64(3),
         "r": float("-inf"), 1: [np.float32(0.5)]},
        tmp_path / "out" / "x.json",
    )  # fmt: skip
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"pck@0.1": 50.0, "t": [1.5, None], "n": 3, "r": None, "1": [0.5]}
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]


def test_check_values_tells_an_absent_key_from_a_null_one():
    """``|null``: unset or absent is fine; ``|absent``: absent is fine, an explicit null is not."""
    from omegaconf import OmegaConf

    from common.errors import check_values

    cfg = OmegaConf.create({"a": None, "m": {"depth": 2}})
    check_values(cfg, {"a": "int>=1|null", "b": "int>=1|null", "b2": "int>=1|absent"})
    check_values(cfg, {"m.depth": "int>=1|absent"})
    with pytest.raises(ValueError, match=r"^a is not set; pass a=<a whole number >= 1>$"):
        check_values(cfg, {"a": "int>=1|absent"})
    with pytest.raises(ValueError, match=r"^b is not set; pass b=<a number > 0>$"):
        check_values(cfg, {"b": ">0"})
    with pytest.raises(ValueError, match=r"m.depth=2 makes no sense here; pass m.depth=<a whole"):
        check_values(cfg, {"m.depth": "int>=3|absent"})
