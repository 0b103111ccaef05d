"""The DiT family's official files sample through this package as through their official samplers:
``load_dit`` reads the file and its family (``arch=``, the file's ``args``, its keys),
``checkpoints.official_diffusion`` gives the diffusion its recipe trained (``conf/diffusion/
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

from diffusion_transformer.checkpoints import load_dit, official_diffusion
from diffusion_transformer.sampling import sample_latents

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


@pytest.fixture(scope="module")
def vavae_like(tmp_path_factory):
    """A tiny diffusers AutoencoderKL with 8 latent channels whose folder holds LightningDiT's
    ``latents_stats.pt`` (the fixture's statistics) and ``scaling_factor`` 1.0, as VA-VAE's."""
    from diffusers import AutoencoderKL

    path = tmp_path_factory.mktemp("vavae")
    AutoencoderKL(
        latent_channels=8, layers_per_block=1, block_out_channels=(8, 8), norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        scaling_factor=1.0,
    ).save_pretrained(path)  # fmt: skip
    fx = load_file(FIXTURES / "lightningdit" / "samplers.safetensors")
    torch.save({"mean": fx["latent_mean"], "std": fx["latent_std"]}, path / "latents_stats.pt")
    return path


def test_lightningdit_latents_are_normalised_channel_by_channel(vavae_like):
    """LightningDiT's ``ImgLatentDataset``: ``(z - mean) / std * multiplier``; its samples are
    decoded after ``* std / multiplier + mean`` (the fixture's ``sample_cfg_denorm``)."""
    from diffusion_transformer.vae import build_vae

    fx = load_file(FIXTURES / "lightningdit" / "samplers.safetensors")
    codec = build_vae({"path": str(vavae_like)})
    assert codec.scale == 1.0
    torch.testing.assert_close(codec.denormalize(fx["sample_cfg"]), fx["sample_cfg_denorm"])
    z = fx["stats_latents"]
    torch.testing.assert_close(codec.normalize(z), (z - fx["latent_mean"]) / fx["latent_std"])
    torch.testing.assert_close(codec.denormalize(codec.normalize(z)), z, rtol=1e-5, atol=1e-5)
    (vavae_like / "bad").mkdir()
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        (vavae_like / "bad" / name).write_bytes((vavae_like / name).read_bytes())
    torch.save({"mean": torch.zeros(1, 4, 1, 1)}, vavae_like / "bad" / "latents_stats.pt")
    with pytest.raises(ValueError, match=r"is not a latent statistics file: expected"):
        build_vae({"path": str(vavae_like / "bad")})


def test_the_sample_command_runs_a_lightningdit_file(run_main, vavae_like):
    args = [f"ckpt={FIXTURES / 'lightningdit' / 'lightningdit.pt'}", f"vae={vavae_like}",
            "cfg_scale=6.7", "cfg_interval=[0.125,1]", "cfg_channels=3", "sampling_steps=3",
            "num_samples=2", "device=cpu", "progress=false"]  # fmt: skip
    code, out, err = run_main("diffusion_transformer.sample", *args)
    assert code == 0, err
    images = np.load(out.split("samples npz : ")[1].split(" (")[0])["arr_0"]
    assert images.shape == (2, 8, 8, 3)


def test_a_latent_model_without_its_vae_is_one_line(cli_main):
    """Any latent model (4 SD-VAE channels, LightningDiT's 8 here) needs ``vae=`` to decode."""
    ckpt = f"ckpt={FIXTURES / 'lightningdit' / 'lightningdit.pt'}"
    code, err = cli_main("diffusion_transformer.sample", ckpt, "num_samples=1", "sampling_steps=1")
    assert code == 2 and err.count("error:") == 1 and "Traceback" not in err
    assert "generates 8-channel VAE latents: set vae=<local folder of its autoencoder" in err
