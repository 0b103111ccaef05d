"""REPA's frozen encoders (``diffusion_transformer.encoders``).

``fixtures/repa/preprocess.safetensors`` was made by ``/work/official/repa/make_fixtures.py``
(sihyun-yu/REPA @ 67f7145): ``raw`` is a uint8 ``[1, 3, 256, 256]`` image (randint, seed 6) and
``dinov2_every4`` is ``train.preprocess_raw_image(raw, 'dinov2-vit-b')[..., ::4, ::4]``.
DINOv2 weights cannot be downloaded here: the loading tests use a tiny DINOv2-like timm ViT with
random weights, saved in Meta's and in timm's key layouts.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from common.metrics.digits import DigitsClassifier, DigitsFeatureSpace
from diffusion_transformer import encoders
from diffusion_transformer.encoders import (
    DINOV2,
    DinoV2Encoder,
    build_encoder,
    dinov2_preprocess,
    load_digits_convnet,
    train_digits_convnet,
    z_dims,
)

FIXTURE = Path(__file__).parent / "fixtures" / "repa" / "preprocess.safetensors"
TINY = {"embed_dim": 32, "depth": 1, "num_heads": 2}  # DINOv2's layout (patch 14, layer scale)


def _tiny_files(tmp_path: Path, name: str) -> tuple[Path, Path, dict]:
    """A tiny ``name`` at timm's pretrained 518 px (37x37 pos_embed), every tensor random, saved
    as timm's ``model.safetensors`` and as Meta's ``.pth`` (``mask_token``; with registers:
    ``register_tokens`` and the class token's position kept inside ``pos_embed``)."""
    model = timm.create_model(
        DINOV2[name][0], pretrained=False, img_size=518, num_classes=0, **TINY
    )
    g = torch.Generator().manual_seed(0)
    state = {k: 0.1 * torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}
    timm_file = tmp_path / "model.safetensors"
    save_file(state, timm_file)
    meta = {**state, "mask_token": torch.randn(1, 32, generator=g)}
    if "reg_token" in meta:
        cls_position = torch.randn(1, 1, 32, generator=g)
        meta["register_tokens"] = meta.pop("reg_token")
        meta["cls_token"] = state["cls_token"] - cls_position
        meta["pos_embed"] = torch.cat([cls_position, state["pos_embed"]], dim=1)
    meta_file = tmp_path / DINOV2[name][2]
    torch.save(meta, meta_file)
    return meta_file, timm_file, state


def _images(n: int = 2, size: int = 256, channels: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, channels, size, size, generator=g) * 2 - 1


def test_dinov2_preprocessing_equals_repa():
    fixture = load_file(FIXTURE)
    ours = dinov2_preprocess(fixture["raw"].float() / 127.5 - 1)  # our [-1, 1] convention
    # atol 6e-7: resizing before normalising (not REPA's order) is off by 1.4e-6
    assert ours.shape == (1, 3, 224, 224)
    torch.testing.assert_close(ours[..., ::4, ::4], fixture["dinov2_every4"], rtol=0, atol=6e-7)


@pytest.mark.parametrize("name", ["dinov2_vitb14", "dinov2_vitb14_reg"])
def test_meta_and_timm_files_give_repas_features(tmp_path, name):
    """Both layouts load to the same encoder, whose tokens equal the 518 px model run at 224 px
    with timm's on-the-fly pos_embed resampling (bicubic, antialias: REPA's resampling)."""
    meta_file, timm_file, state = _tiny_files(tmp_path, name)
    from_meta = DinoV2Encoder(name, meta_file, 256, **TINY)
    from_timm = DinoV2Encoder(name, timm_file, 256, **TINY)
    images = _images()
    feats = from_meta.features(images)
    assert feats.shape == (2, 256, 32) == (2, from_meta.num_tokens(256), from_meta.embed_dim)
    torch.testing.assert_close(feats, from_timm.features(images), rtol=0, atol=1e-5)
    reference = timm.create_model(
        DINOV2[name][0], img_size=518, num_classes=0, dynamic_img_size=True, **TINY
    ).eval()
    reference.load_state_dict(state)
    with torch.no_grad():
        expected = reference.forward_features(dinov2_preprocess(images))
    torch.testing.assert_close(feats, expected[:, reference.num_prefix_tokens :], rtol=0, atol=1e-5)


def test_dinov2_encoder_is_frozen(tmp_path):
    _, timm_file, _ = _tiny_files(tmp_path, "dinov2_vitb14")
    encoder = DinoV2Encoder("dinov2_vitb14", timm_file, 512, **TINY)
    assert encoder.train().training is False
    assert not any(p.requires_grad for p in encoder.parameters())
    feats = encoder.features(_images(1, 512).requires_grad_())
    assert feats.shape == (1, 1024, 32) and not feats.requires_grad  # 448 px: 32x32 tokens


def test_missing_weights_name_the_file_and_the_key(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"none were given; set repa\.weights=.*dinov2_vitl14_pretrain\.pth"
    ):
        build_encoder("dinov2_vitl14")
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(FileNotFoundError, match=rf"not found: {missing}; set repa\.weights="):
        build_encoder("dinov2_vitb14", missing)


def test_wrong_files_name_the_first_bad_key(tmp_path):
    _, timm_file, state = _tiny_files(tmp_path, "dinov2_vitb14")
    del state["norm.weight"]
    save_file(state, tmp_path / "partial.safetensors")
    with pytest.raises(
        ValueError,
        match=r"^partial\.safetensors is not a dinov2_vitb14 checkpoint "
        r"\(missing key norm\.weight\)",
    ):
        DinoV2Encoder("dinov2_vitb14", tmp_path / "partial.safetensors", **TINY)
    with pytest.raises(ValueError, match=r"\(shape of cls_token\)"):
        DinoV2Encoder("dinov2_vitb14", timm_file, embed_dim=48, depth=1, num_heads=2)
    with pytest.raises(
        ValueError,
        match=r"holds DINOv2 weights without registers, not dinov2_vitb14_reg; "
        r"use repa\.encoder=dinov2_vitb14 ",
    ):
        DinoV2Encoder("dinov2_vitb14_reg", timm_file, **TINY)
    save_file({**state, "pos_embed": torch.zeros(1, 1000, 32)}, tmp_path / "grid.safetensors")
    with pytest.raises(
        ValueError, match=r"^grid\.safetensors does not convert to dinov2_vitb14 \("
    ):
        DinoV2Encoder("dinov2_vitb14", tmp_path / "grid.safetensors", **TINY)
    with pytest.raises(ValueError, match=r"built for 256 px images, got 512 px; build it with"):
        DinoV2Encoder("dinov2_vitb14", timm_file, **TINY).features(_images(1, 512))
    torch.save({"weights": [1, 2]}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"^other\.pt is not a state dict"):
        DinoV2Encoder("dinov2_vitb14", tmp_path / "other.pt", **TINY)


def test_one_line_errors_for_sizes_names_and_inputs(tmp_path):
    with pytest.raises(
        ValueError, match=r"^dinov2_vitb14 gives 256 tokens at 256 px but the DiT has 1024;"
    ):
        build_encoder("dinov2_vitb14", image_size=256, tokens=1024)
    with pytest.raises(
        ValueError, match=r"^digits_convnet gives 16 tokens at 16 px but the DiT has 64;"
    ):
        build_encoder("digits_convnet", image_size=16, tokens=64, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="at least 256 px"):
        build_encoder("dinov2_vitb14", image_size=32)
    with pytest.raises(ValueError, match=r"unknown encoder 'dinov3'; use one of dinov2_vitb14, "):
        z_dims("dinov2_vitb14,dinov3")
    with pytest.raises(ValueError, match="takes no weight file"):
        build_encoder("digits_convnet", weights="x.pth", image_size=8, cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"take RGB images \[N, 3, H, W\], got \(2, 1, 256, 256\)"):
        dinov2_preprocess(_images(channels=1))


def test_z_dims_are_the_encoders_widths(digits_encoder):
    assert z_dims("dinov2_vitb14, dinov2_vitl14_reg,digits_convnet") == [768, 1024, 64]
    assert z_dims(["digits_convnet"]) == [digits_encoder.embed_dim]


@pytest.fixture(scope="module")
def digits_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def digits_encoder(digits_cache):
    return build_encoder("digits_convnet", image_size=8, cache_dir=digits_cache, tokens=16)


def test_digits_convnet_tokens_match_a_patch2_dit(digits_encoder):
    images = torch.rand(5, 1, 8, 8) * 2 - 1
    feats = digits_encoder.features(images)
    assert feats.shape == (5, 16, 64) and not feats.requires_grad
    assert not any(p.requires_grad for p in digits_encoder.parameters())
    assert digits_encoder.train().training is False
    assert digits_encoder.features(torch.rand(3, 1, 16, 16) * 2 - 1).shape == (3, 16, 64)


def test_digits_convnet_is_cached_and_deterministic(digits_encoder, digits_cache, monkeypatch):
    files = list((digits_cache / "encoders").glob("digits_convnet_*.safetensors"))
    assert len(files) == 1 and load_file(files[0])["heldout_accuracy"] > 0.9
    retrained, _ = train_digits_convnet()
    for key, value in digits_encoder.state_dict().items():
        assert torch.equal(value, retrained.state_dict()[key]), key
    monkeypatch.setattr(encoders, "train_digits_convnet", lambda *a: pytest.fail("retrained"))
    cached = load_digits_convnet(digits_cache)
    assert all(torch.equal(v, cached.state_dict()[k]) for k, v in retrained.state_dict().items())


def test_digits_convnet_is_not_the_metric_network(digits_encoder, digits_cache):
    """fd_digits / acc_digits must not score the network the DiT was aligned with."""
    metric = DigitsFeatureSpace.load(digits_cache).model
    ours = digits_encoder.state_dict()
    for key, value in metric.state_dict().items():
        same = [k for k, v in ours.items() if v.shape == value.shape and torch.allclose(v, value)]
        assert not same, (key, same)
    assert not isinstance(digits_encoder, DigitsClassifier)
