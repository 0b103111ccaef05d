"""GANgealing losses: L_TV, L_I and the perceptual distances of Eq. 4.5 / Table 4.3."""

import math
from pathlib import Path

import pytest
import torch

from gangealing.align.flow import identity_loss, total_variation_huber
from gangealing.align.stn import FlowTransformer
from gangealing.training.losses import VGG16_BACKBONE_FILE, perceptual_loss

VGG16_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
VGG16_WIDTHS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)


def _tiny_vgg16_state(prefix: str = "features.") -> dict:
    """Every key and shape of torchvision's vgg16().features, stored in a few KB: each weight is an
    overlapping strided view of a small random storage (torch.save keeps the views)."""
    generator = torch.Generator().manual_seed(0)
    state, in_channels = {}, 3
    for index, width in zip(VGG16_CONVS, VGG16_WIDTHS, strict=True):
        std = math.sqrt(2.0 / (9 * in_channels))
        storage = torch.randn(12 * width + 5 * in_channels + 16, generator=generator) * std
        state[f"{prefix}{index}.weight"] = storage.as_strided(
            (width, in_channels, 3, 3), (12, 5, 3, 1)
        )
        state[f"{prefix}{index}.bias"] = torch.zeros(1).expand(width)
        in_channels = width
    return state


def test_tiny_state_has_torchvision_vgg16_layout():
    from torchvision.models.vgg import cfgs, make_layers

    reference = make_layers(cfgs["D"]).state_dict()
    tiny = _tiny_vgg16_state(prefix="")
    assert {k: v.shape for k, v in tiny.items()} == {k: v.shape for k, v in reference.items()}


def _smooth_image(n: int = 2, size: int = 32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand(n, 3, 6, 6, generator=generator) * 2 - 1
    return torch.nn.functional.interpolate(coarse, size=size, mode="bicubic", align_corners=False)


def test_total_variation_huber():
    constant = torch.full((2, 8, 8, 2), 0.3)
    assert total_variation_huber(constant) == 0
    noisy = constant + 0.1 * torch.randn(2, 8, 8, 2, generator=torch.Generator().manual_seed(0))
    assert total_variation_huber(noisy) > 0
    per_sample = total_variation_huber(noisy, reduction="none")
    assert per_sample.shape == (2,)
    torch.testing.assert_close(per_sample.mean(), total_variation_huber(noisy))
    # Quadratic branch: 0.5 * d^2 for |d| <= delta; linear beyond.
    ramp = torch.zeros(1, 2, 3, 2)
    ramp[:, :, 1:] = 0.2
    torch.testing.assert_close(total_variation_huber(ramp), torch.tensor(0.5 * 0.04 / 2))
    ramp[:, :, 1:] = 3.0
    torch.testing.assert_close(total_variation_huber(ramp), torch.tensor((3.0 - 0.5) / 2))
    with pytest.raises(ValueError, match="reduction"):
        total_variation_huber(noisy, reduction="sum")


def test_identity_loss_zero_at_init():
    flow_stn = FlowTransformer(input_size=16, widths=(8, 16), flow_size=4, padding_mode="border")
    out = flow_stn(torch.rand(2, 3, 16, 16) * 2 - 1)
    assert identity_loss(out.flow) == 0
    assert total_variation_huber(out.flow) == 0
    torch.testing.assert_close(identity_loss(torch.full((1, 4, 4, 2), 0.5)), torch.tensor(0.25))


def test_pyramid_l1_offline_distance():
    distance = perceptual_loss("pyramid_l1", levels=3)
    x = _smooth_image()
    assert torch.equal(distance(x, x), torch.zeros(2))
    shifted = [torch.roll(x, shifts=s, dims=-1) for s in (1, 2, 4)]
    d = [distance(x, y) for y in shifted]
    assert d[0].shape == (2,)
    torch.testing.assert_close(distance(shifted[0], x), d[0])
    assert bool((d[0] > 0).all() and (d[0] < d[1]).all() and (d[1] < d[2]).all())


def test_unknown_loss_name():
    with pytest.raises(ValueError, match="pyramid_l1"):
        perceptual_loss("l2")


def test_lpips_missing_backbone_names_file_and_config_key(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError) as info:
        perceptual_loss("lpips")
    message = str(info.value)
    assert VGG16_BACKBONE_FILE in message and "loss.backbone_path" in message
    assert str(tmp_path / "hub" / "checkpoints") in message and "pyramid_l1" in message
    with pytest.raises(FileNotFoundError, match="loss.backbone_path"):
        perceptual_loss("lpips", backbone_path=tmp_path / "nowhere.pth")


def test_lpips_loads_local_backbone_from_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    state = _tiny_vgg16_state()
    state["classifier.6.bias"] = torch.zeros(10)  # ignored, as in the real torchvision file
    torch.save(state, checkpoints / VGG16_BACKBONE_FILE)
    assert (checkpoints / VGG16_BACKBONE_FILE).stat().st_size < 2_000_000

    distance = perceptual_loss("lpips")
    torch.testing.assert_close(distance.model.net.slice1[0].weight, state["features.0.weight"])
    torch.testing.assert_close(
        getattr(distance.model.net.slice5, "28").weight, state["features.28.weight"]
    )
    import lpips

    heads = torch.load(
        Path(lpips.__file__).parent / "weights/v0.1/vgg.pth", map_location="cpu", weights_only=True
    )
    torch.testing.assert_close(distance.model.lin0.model[1].weight, heads["lin0.model.1.weight"])
    distance.train()
    assert not distance.model.training  # dropout of the lpips heads stays off
    x = _smooth_image()
    y = torch.roll(x, shifts=3, dims=-1).requires_grad_(True)
    d = distance(x, y)
    assert d.shape == (2,) and torch.isfinite(d).all() and (d > 0).all()
    assert torch.equal(distance(x, x), torch.zeros(2))
    d.sum().backward()
    assert y.grad.abs().sum() > 0
    assert all(p.grad is None for p in distance.parameters())


def test_ssl_vgg_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="loss.checkpoint_path"):
        perceptual_loss("ssl_vgg", checkpoint_path=tmp_path / "simclr_vgg_phase150.pt")
    path = tmp_path / "simclr_vgg_phase150.pt"
    torch.save(_tiny_vgg16_state(prefix=""), path)  # layout of vgg16().features
    distance = perceptual_loss("ssl_vgg", checkpoint_path=path)
    x = _smooth_image()
    d = distance(x, torch.roll(x, shifts=3, dims=-1))
    assert d.shape == (2,) and torch.isfinite(d).all() and (d > 0).all()
    assert torch.equal(distance(x, x), torch.zeros(2))


def test_backbone_with_wrong_keys_is_rejected(tmp_path):
    path = tmp_path / VGG16_BACKBONE_FILE
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="features.0.weight"):
        perceptual_loss("lpips", backbone_path=path)
