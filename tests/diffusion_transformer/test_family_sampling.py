"""The DiT family's official files sample through this package as through their official samplers:
``load_dit`` reads the file and its family (``arch=``, the file's ``args``, its keys),
``sampling.official_diffusion`` gives the diffusion its recipe trained (``conf/diffusion/
{sit,repa,lightningdit}.yaml``), and ``sample_latents`` (what ``python -m
diffusion_transformer.sample`` runs) returns the official sampler's result for the same initial
noise, guidance scale and interval. The fixtures are described in ``test_family_models.py``; the
samplers' own equivalences (every SDE form, recorded noise) in ``tests/common/test_transport.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from diffusion_transformer.checkpoints import load_dit
from diffusion_transformer.sampling import official_diffusion, sample_latents

FIXTURES = Path(__file__).parent / "fixtures"


def test_a_sit_file_samples_as_sits_ode():
    """SiT ``sample.py --mode ODE`` (dopri5, cfg 4 on channels 0..2; 10 grid points = 9 steps)."""
    model, meta = load_dit(FIXTURES / "sit" / "sit.pt", arch="SiT", num_heads=4, cfg_channels=3)
    diffusion = official_diffusion(model, meta)
    assert diffusion["preset"] == "sit" and diffusion["sampler"] == "sde"
    fx = load_file(FIXTURES / "sit" / "samplers.safetensors")
    for cfg_scale, key in ((1.0, "nocfg"), (4.0, "cfg")):
        x = sample_latents(model, diffusion, fx["y"], fx["z"], "dopri5", 9, cfg_scale)
        expected = fx[f"ode.linear.velocity.dopri5.{key}"][:2]
        torch.testing.assert_close(x, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_a_repa_file_samples_as_repas_ode_with_its_guidance_interval(sampler):
    """REPA ``euler_sampler`` (10 steps, cfg 1.8 only for t in [0, 0.7], all channels); the file's
    projectors make it REPA's (t = 1 is noise), though its ``args`` call it SiT-XL/2."""
    model, meta = load_dit(FIXTURES / "repa" / "repa.pt", arch="SiT", num_heads=4)
    diffusion = official_diffusion(model, meta)
    assert diffusion["preset"] == "repa" and model.encoder_depth == 1
    fx = load_file(FIXTURES / "repa" / "samplers.safetensors")
    x = sample_latents(model, diffusion, fx["y"], fx["latents"], sampler, 10, 1.8,
                       cfg_interval=(0.0, 0.7))  # fmt: skip
    torch.testing.assert_close(x.double(), fx[f"{sampler}.cfg1.8.samples"], rtol=0, atol=1e-5)


def test_a_lightningdit_file_samples_as_its_inference():
    """LightningDiT ``inference.py`` (Euler, timestep shift 0.3, cfg 6.7 on channels 0..2 from
    ``cfg_interval_start`` 0.125): its ``{"ema": ...}`` file is recognised by its blocks."""
    model, meta = load_dit(FIXTURES / "lightningdit" / "lightningdit.pt", cfg_channels=3)
    diffusion = official_diffusion(model, meta)
    assert meta["family"] == "LightningDiT" and diffusion["preset"] == "lightningdit"
    fx = load_file(FIXTURES / "lightningdit" / "samplers.safetensors")
    start, scale = float(fx["cfg_interval_start"]), float(fx["cfg_scale"])
    plain = sample_latents(model, diffusion, fx["y"], fx["z"], "euler", 9)
    torch.testing.assert_close(plain, fx["sample_nocfg"], rtol=0, atol=1e-5)
    guided = sample_latents(model, diffusion, fx["y"], fx["z"], "euler", 9, scale,
                            cfg_interval=(start, 1.0))  # fmt: skip
    torch.testing.assert_close(guided, fx["sample_cfg"], rtol=0, atol=1e-5)


def test_the_sample_command_runs_released_sit_and_repa_files(run_main, tiny_vae):
    """``python -m diffusion_transformer.sample`` on the official files, as a user runs them: the
    recipe's default sampler (SDE, shortened here), a guidance interval, the VAE decoding."""
    tiny = ["num_samples=2", "sampling_steps=3", "device=cpu", "progress=false", f"vae={tiny_vae}"]
    for ckpt, extra in (
        ("sit/sit.pt", ["arch=SiT", "num_heads=4", "cfg_scale=1.5", "cfg_channels=3"]),
        ("repa/repa.pt", ["arch=SiT", "num_heads=4", "cfg_scale=1.8", "cfg_interval=[0,0.7]"]),
    ):
        code, out, err = run_main(
            "diffusion_transformer.sample", f"ckpt={FIXTURES / ckpt}", *extra, *tiny
        )
        assert code == 0, err
        npz = out.split("samples npz : ")[1].split(" (")[0]
        images = np.load(npz)["arr_0"]
        assert images.shape == (2, 16, 16, 3) and images.std() > 0


def test_sampler_and_interval_errors_name_the_fix(cli_main, tiny_vae):
    ckpt = [f"ckpt={FIXTURES / 'repa' / 'repa.pt'}", "arch=SiT", "num_heads=4"]
    code, err = cli_main("diffusion_transformer.sample", *ckpt, f"vae={tiny_vae}", "sampler=ddpm")
    assert code == 2 and "sampler 'ddpm' does not apply to a transport (flow) model" in err
    code, err = cli_main("diffusion_transformer.sample", *ckpt, "cfg_interval=[0,0.7]")
    assert code == 2 and "cfg_interval=[0, 0.7] is ignored because cfg_scale=1" in err
    code, err = cli_main(
        "diffusion_transformer.sample", *ckpt, f"vae={tiny_vae}", "cfg_scale=2",
        "cfg_interval=[0.7,0.1]", "num_samples=1",
    )  # fmt: skip
    assert code == 2 and "cfg_interval=[0.7, 0.1] is not an interval" in err
