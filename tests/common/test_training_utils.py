"""EMA, guidance, flop counting, checkpoint I/O and the resumable sampler."""

import itertools
import pickle

import pytest
import torch

from common.checkpoint import atomic_save, safe_load
from common.diffusion.guidance import Guidance
from common.nn.flops import attention_macs, count_macs, linear_macs
from common.training import InfiniteSampler, SafeCheckpointIO
from common.training.ema import EMA


def test_ema_starts_as_exact_copy_and_follows_the_formula():
    model = torch.nn.Linear(4, 3)
    ema = EMA(model, decay=0.9)
    for p, e in zip(model.parameters(), ema.module.parameters(), strict=True):
        assert torch.equal(p, e) and not e.requires_grad
    before = [p.detach().clone() for p in ema.module.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    for b, p, e in zip(before, model.parameters(), ema.module.parameters(), strict=True):
        torch.testing.assert_close(e, 0.9 * b + 0.1 * p)
    assert set(ema.state_dict()) == {"module.weight", "module.bias"}
    with pytest.raises(ValueError, match="decay"):
        EMA(model, decay=1.5)


def test_guidance_one_pass_equals_two_passes_inside_its_interval():
    calls = []

    def model(x, t, y):
        calls.append(len(x))
        return torch.cat([x * (y.view(-1, 1, 1, 1) + 1), x * 0 + y.view(-1, 1, 1, 1)], 1)

    x, t, y = torch.randn(2, 3, 2, 2), torch.tensor([5, 5]), torch.tensor([1, 2])
    out = Guidance(4.0, null_label=9)(model, x, t, y)
    assert calls == [4]
    cond, uncond = model(x, t, y), model(x, t, torch.tensor([9, 9]))
    torch.testing.assert_close(out[:, :3], uncond[:, :3] + 4.0 * (cond[:, :3] - uncond[:, :3]))
    torch.testing.assert_close(out[:, 3:], cond[:, 3:])
    torch.testing.assert_close(Guidance(1.0, 9)(model, x, t, y), cond)
    partial = Guidance(4.0, 9, channels=2)(model, x, t, y)
    torch.testing.assert_close(partial[:, 2:], cond[:, 2:])
    calls.clear()  # outside [0.1, 0.7] (at = timestep / T): the conditional pass alone
    interval = Guidance(4.0, 9, interval=(0.1, 0.7))
    torch.testing.assert_close(interval(model, x, t, y, at=0.9), cond)
    torch.testing.assert_close(interval(model, x, t, y, at=0.5), out)
    assert calls == [2, 4]
    with pytest.raises(ValueError, match=r"cfg_interval=\[0.7, 0.1\] is not an interval"):
        Guidance(4.0, 9, interval=(0.7, 0.1))


def test_count_macs_counts_multiply_adds():
    layer = torch.nn.Linear(8, 5)
    assert count_macs(layer, torch.randn(3, 8)) == linear_macs(3, 8, 5) == 120
    q = torch.randn(1, 2, 6, 4)
    macs = count_macs(lambda a: torch.nn.functional.scaled_dot_product_attention(a, a, a), q)
    assert macs == attention_macs(6, 6, 8)


def test_atomic_save_and_safe_load(tmp_path):
    sd = {"w": torch.randn(3, 3), "meta": {"step": 3, "name": "x"}}
    atomic_save(sd, tmp_path / "a.pt")
    loaded = safe_load(tmp_path / "a.pt")
    assert torch.equal(loaded["w"], sd["w"]) and loaded["meta"] == {"step": 3, "name": "x"}
    atomic_save({"w": sd["w"]}, tmp_path / "a.safetensors")
    assert torch.equal(safe_load(tmp_path / "a.safetensors")["w"], sd["w"])
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary files left behind


class Payload:
    def __reduce__(self):
        return (print, ("this would run on load",))


def test_safe_load_refuses_code_and_names_missing_files(tmp_path):
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"x": Payload()}, f)
    with pytest.raises(ValueError, match="run code from the file"):
        safe_load(tmp_path / "evil.pt")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        safe_load(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError):
        safe_load(tmp_path / "junk.pt")


def test_interrupted_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    atomic_save({"v": torch.tensor(1)}, path)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("common.checkpoint.os.replace", crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"v": torch.tensor(2)}, path)
    monkeypatch.undo()
    assert safe_load(path)["v"].item() == 1
    assert not list(tmp_path.glob(".*.tmp"))
    io = SafeCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(1)}}, tmp_path / "x.ckpt")
    assert io.load_checkpoint(tmp_path / "x.ckpt")["state_dict"]["w"].item() == 1.0


def test_infinite_sampler_resumes_and_shards():
    full = list(itertools.islice(iter(InfiniteSampler(10, seed=3)), 35))
    assert sorted(full[:10]) == list(range(10)) and full[:10] != full[10:20]
    resumed = list(itertools.islice(iter(InfiniteSampler(10, seed=3, start=17)), 18))
    assert resumed == full[17:]
    ranks = [list(itertools.islice(iter(InfiniteSampler(10, 3, r, 2)), 5)) for r in (0, 1)]
    assert sorted(ranks[0] + ranks[1]) == list(range(10))
    with pytest.raises(ValueError, match="empty"):
        InfiniteSampler(0)


def test_a_model_config_builds_only_an_allowed_target_without_nested_ones(tmp_path):
    """A checkpoint's copy of its ``model`` config must not choose the code that runs."""
    from common.checkpoint import build_model

    allowed = ["torch.nn.Linear"]
    layer = build_model(
        {"_target_": "torch.nn.Linear", "in_features": 2, "out_features": 3}, allowed
    )
    assert isinstance(layer, torch.nn.Linear) and layer.out_features == 3
    with pytest.raises(ValueError, match=r"model._target_='os.system' is not a model here; use "
                       r"one of torch.nn.Linear"):  # fmt: skip
        build_model({"_target_": "os.system", "command": f"touch {tmp_path}/x"}, allowed)
    nested = {"_target_": "os.system", "command": f"touch {tmp_path}/y"}
    with pytest.raises(ValueError, match="holds a _target_ of its own"):
        build_model({"_target_": "torch.nn.Linear", "in_features": nested, "out_features": 1},
                    allowed)  # fmt: skip
    assert not list(tmp_path.iterdir())  # nothing ran
    with pytest.raises(TypeError, match="out_features"):  # the constructor's own error, unwrapped
        build_model({"_target_": "torch.nn.Linear", "in_features": 2}, allowed)
