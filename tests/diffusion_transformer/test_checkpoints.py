"""Loading official-format DiT weights: plain state dicts and training checkpoints, strict keys,
identical outputs, and errors that name the setting to change."""

import argparse

import pytest
import torch

from common.checkpoint import atomic_save
from diffusion_transformer.checkpoints import infer_config, load_dit, save_ema
from diffusion_transformer.models import DiT, DiT_models


@pytest.fixture(scope="module")
def official_s2():
    """A DiT-S/2 for 256px ImageNet latents with random weights, saved like the released files."""
    torch.manual_seed(0)
    model = DiT_models["DiT-S/2"](input_size=32, num_classes=1000)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.normal_(0, 0.02)
    return model.eval()


def test_plain_state_dict_loads_strictly_with_identical_outputs(tmp_path, official_s2):
    atomic_save(official_s2.state_dict(), tmp_path / "DiT-S-2-256x256.pt")
    loaded, _ = load_dit(tmp_path / "DiT-S-2-256x256.pt")
    x, t, y = torch.randn(2, 4, 32, 32), torch.tensor([10, 900]), torch.tensor([207, 1000])
    assert torch.equal(loaded(x, t, y), official_s2(x, t, y))
    cfg = infer_config(official_s2.state_dict())
    assert cfg == {
        "input_size": 32,
        "patch_size": 2,
        "in_channels": 4,
        "hidden_size": 384,
        "depth": 12,
        "num_heads": 6,
        "learn_sigma": True,
        "num_classes": 1000,
        "class_dropout_prob": 0.1,
        "block": "adaln_zero",
    }


def test_official_training_checkpoint_with_args_namespace(tmp_path, official_s2):
    ckpt = {
        "model": official_s2.state_dict(),
        "ema": official_s2.state_dict(),
        "opt": {"state": {}, "param_groups": []},
        "args": argparse.Namespace(model="DiT-S/2", image_size=256, num_classes=1000),
    }
    atomic_save(ckpt, tmp_path / "0400000.pt")
    loaded, _ = load_dit(tmp_path / "0400000.pt")
    assert loaded.num_classes == 1000 and loaded.input_size == 32


def test_mismatches_name_the_fix(tmp_path, official_s2):
    path = tmp_path / "s2.pt"
    atomic_save(official_s2.state_dict(), path)
    with pytest.raises(ValueError, match="image size"):
        load_dit(path, image_size=512)
    with pytest.raises(ValueError, match="number of classes"):
        load_dit(path, num_classes=10)
    with pytest.raises(ValueError, match="model width"):
        load_dit(path, arch="DiT-B/2")
    shallow = DiT(input_size=32, hidden_size=384, depth=2, num_heads=6, num_classes=1000)
    atomic_save(shallow.state_dict(), tmp_path / "shallow.pt")
    with pytest.raises(ValueError, match="missing keys"):
        load_dit(tmp_path / "shallow.pt", arch="DiT-S/2")
    with pytest.raises(KeyError, match="unknown DiT model"):
        load_dit(path, arch="DiT-Z/2")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_dit(tmp_path / "nope.pt")
    atomic_save({"weight": torch.ones(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="is a plain state dict of another model, not a DiT"):
        load_dit(tmp_path / "other.pt")


def test_nonstandard_width_needs_a_model_name(tmp_path):
    model = DiT(input_size=8, hidden_size=96, depth=2, num_heads=4, num_classes=10)
    atomic_save(model.state_dict(), tmp_path / "w96.pt")
    with pytest.raises(ValueError, match="attention heads"):
        load_dit(tmp_path / "w96.pt")


def test_our_ema_file_records_its_architecture_and_stays_a_plain_state_dict(tmp_path):
    """ema.pt: torch.load gives the official-key tensors only; load_dit needs no extra key."""
    model = DiT(input_size=8, hidden_size=96, depth=2, num_heads=4, num_classes=10).eval()
    diffusion = {"objective": "ddpm", "sampler": "ddim", "sampling_steps": 25}
    save_ema(
        model.state_dict(), tmp_path / "ema.pt", {"model": model.config, "diffusion": diffusion}
    )
    plain = torch.load(tmp_path / "ema.pt", weights_only=True)
    assert plain.keys() == model.state_dict().keys()
    loaded, meta = load_dit(tmp_path / "ema.pt")
    assert loaded.num_heads == 4 and meta["diffusion"] == diffusion
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([3, 900]), torch.tensor([1, 7])
    with torch.no_grad():
        assert torch.equal(loaded(x, t, y), model(x, t, y))
