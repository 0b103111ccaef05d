"""GPU checks (marker `gpu`, skipped without CUDA): fused attention, bf16, a real training run."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from common.nn.layers import Attention
from diffusion_transformer.models import DiT_models
from diffusion_transformer.sampling import sample_latents
from diffusion_transformer.training import train

pytestmark = pytest.mark.gpu


def test_fused_attention_kernels_match_the_math_path():
    attn = Attention(1152, 16).cuda().to(torch.bfloat16)
    x = torch.randn(4, 256, 1152, device="cuda", dtype=torch.bfloat16)
    with sdpa_kernel(SDPBackend.MATH):
        reference = attn(x).float()
    for backend in (
        SDPBackend.FLASH_ATTENTION,
        SDPBackend.EFFICIENT_ATTENTION,
        SDPBackend.CUDNN_ATTENTION,
    ):
        with sdpa_kernel(backend):
            torch.testing.assert_close(attn(x).float(), reference, atol=2e-2, rtol=2e-2)


def test_xl2_bf16_forward_matches_fp32():
    torch.manual_seed(0)
    model = DiT_models["DiT-XL/2"](input_size=32).cuda().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "adaLN" in name or "final_layer.linear" in name:
                p.normal_(0, 0.02)
    x = torch.randn(8, 4, 32, 32, device="cuda")
    t, y = torch.randint(0, 1000, (8,), device="cuda"), torch.randint(0, 1000, (8,), device="cuda")
    with torch.no_grad():
        ref = model(x, t, y)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low = model(x, t, y).float()
    assert (low - ref).abs().mean() / ref.abs().mean() < 0.02


def test_guided_bf16_sampling_on_gpu():
    model = DiT_models["DiT-S/2"](input_size=32).cuda().eval()
    noise = torch.randn(4, 4, 32, 32, device="cuda")
    labels = torch.tensor([1, 2, 3, 4], device="cuda")
    out = sample_latents(
        model,
        {"objective": "ddpm"},
        labels,
        noise,
        sampler="ddim",
        steps=5,
        cfg_scale=4.0,
        autocast_dtype=torch.bfloat16,
    )
    assert out.shape == (4, 4, 32, 32) and torch.isfinite(out).all()


def test_training_run_on_gpu_bf16(compose_train):
    result = train(
        compose_train(
            "trainer=gpu",
            "trainer.devices=1",
            "trainer.max_steps=20",
            "logger=none",
            "sample_every=10",
            "diffusion.sampling_steps=5",
            "trainer.enable_progress_bar=false",
        )
    )
    assert result.module.trainer.global_step == 20 and result.samples.is_file()
    assert (
        result.module.trainer.strategy.root_device.type == "cuda"
    )  # Lightning moves it back after fit
