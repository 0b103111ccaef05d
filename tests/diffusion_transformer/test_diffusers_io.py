"""DiT <-> diffusers (``DiTTransformer2DModel``, ``DiTPipeline``): same outputs both ways, folders
that ``from_pretrained`` loads offline, and the timestep convention diffusers gets wrong for DiT.

Every parameter is randomised before a comparison (the zero-initialised adaLN and final layers
included), so a wrong key mapping cannot hide behind zeros.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffusion_transformer.checkpoints import load_dit
from diffusion_transformer.diffusers_io import (
    export_diffusers,
    from_diffusers,
    load_diffusers_pipeline,
    to_diffusers,
    use_dit_timestep_convention,
)
from diffusion_transformer.models import DiT
from tests.integration.conftest import run_cli


def _random_dit(**kwargs) -> DiT:
    config = dict(
        input_size=8, patch_size=2, in_channels=1, hidden_size=64, depth=2, num_heads=4,
        num_classes=10,
    )  # fmt: skip
    torch.manual_seed(0)
    dit = DiT(**{**config, **kwargs}).eval()
    with torch.no_grad():
        for p in dit.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
    return dit


def _inputs(dit: DiT, n: int = 4):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, dit.in_channels, dit.input_size, dit.input_size, generator=g)
    t = torch.tensor([0, 17, 500, 999][:n])
    y = torch.tensor([0, 3, dit.num_classes, 7][:n])  # the null class included
    return x, t, y


@torch.no_grad()
def test_outputs_agree_both_ways():
    dit = _random_dit()
    x, t, y = _inputs(dit)
    ours = dit(x, t, y)
    theirs = to_diffusers(dit)(x, timestep=t, class_labels=y).sample
    assert (ours - theirs).abs().max() < 1e-5
    back = from_diffusers(to_diffusers(dit))
    for key, value in dit.state_dict().items():
        torch.testing.assert_close(back.state_dict()[key], value, rtol=0, atol=0)
    assert torch.equal(back(x, t, y), ours)


@torch.no_grad()
def test_exported_folder_loads_offline_and_needs_dits_timestep_shift(tmp_path):
    from diffusers import DiTTransformer2DModel

    dit = _random_dit()
    x, t, y = _inputs(dit)
    out = export_diffusers(dit, tmp_path / "export")
    plain = DiTTransformer2DModel.from_pretrained(out / "transformer", local_files_only=True)
    # diffusers' own timestep features (downscale_freq_shift=1) are not DiT's (0).
    assert (plain(x, timestep=t, class_labels=y).sample - dit(x, t, y)).abs().max() > 1e-3
    fixed = use_dit_timestep_convention(plain)(x, timestep=t, class_labels=y).sample
    assert (fixed - dit(x, t, y)).abs().max() < 1e-5
    # A pixel-space export has no VAE, hence no pipeline: one error naming the loader to use.
    with pytest.raises(FileNotFoundError, match=r"no model_index.json.*load_diffusers_transformer"):
        load_diffusers_pipeline(out)
    imported, meta = load_dit(out)  # and back: the folder is a checkpoint for sample/evaluate
    assert torch.equal(imported(x, t, y), dit(x, t, y))
    assert meta["diffusion"]["noise_schedule"] == "linear"
    assert meta["diffusion"]["diffusion_steps"] == 1000


@torch.no_grad()
def test_latent_model_exports_a_dit_pipeline(tmp_path, tiny_vae):
    dit = _random_dit(in_channels=4, num_classes=1000)  # DiTPipeline's null class is 1000
    out = export_diffusers(dit, tmp_path / "pipe", vae=tiny_vae)
    assert (out / "model_index.json").is_file()
    pipe = load_diffusers_pipeline(out)
    x, t, y = _inputs(dit)
    model_out = pipe.transformer(x, timestep=t, class_labels=y).sample
    assert (model_out - dit(x, t, y)).abs().max() < 1e-5
    images = pipe(
        class_labels=[1, 2], num_inference_steps=2, guidance_scale=1.5, output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images  # fmt: skip
    assert images.shape == (2, 16, 16, 3) and 0 <= images.min() <= images.max() <= 1
    _, meta = load_dit(out)
    assert meta["vae"]["path"] == str(out / "vae")


def test_export_cli_and_refusals(tmp_path):
    dit = _random_dit()
    torch.save(dit.state_dict(), tmp_path / "dit.pt")  # an official-layout plain state dict
    out = run_cli(
        "diffusion_transformer.export_diffusers",
        f"ckpt={tmp_path / 'dit.pt'}",
        "num_heads=4",
        f"out={tmp_path / 'export'}",
        cwd=tmp_path,
    ).stdout
    assert "transformer + scheduler" in out
    imported, _ = load_dit(tmp_path / "export")
    x, t, y = _inputs(dit)
    with torch.no_grad():
        assert torch.equal(imported(x, t, y), dit(x, t, y))
    with pytest.raises(ValueError, match="adaLN-Zero blocks only"):
        to_diffusers(_random_dit(block="in_context"))
    with pytest.raises(ValueError, match="transport objective"):
        export_diffusers(dit, tmp_path / "flow", diffusion={"objective": "transport"})
    with pytest.raises(ValueError, match="has no use_rope, projectors; sample this model with"):
        to_diffusers(_random_dit(use_rope=True, projector_dims=[8], encoder_depth=1))
    sit = Path(__file__).parent / "fixtures" / "sit" / "sit.pt"  # an official SiT: a transport
    code = run_cli("diffusion_transformer.export_diffusers", f"ckpt={sit}", "arch=SiT",
                   "num_heads=4", f"out={tmp_path / 'sit'}", cwd=tmp_path, check=False)  # fmt: skip
    assert code.returncode != 0 and "trained with the transport objective" in code.stderr
    with pytest.raises(FileNotFoundError, match="no VAE at .*: set vae=<"):
        export_diffusers(dit, tmp_path / "latent", vae=tmp_path / "missing")


@torch.no_grad()
def test_dpmpp_2m_samples_as_dit_pipeline_with_dpm_solver(tmp_path, tiny_vae):
    """``sampler=dpmpp_2m`` equals diffusers' documented DiT example: ``DiTPipeline`` with
    ``DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)``, 8 steps, guidance 4 (all
    latent channels, null class 1000), the same initial noise; the learned-sigma half is split off
    before the solver, as the pipeline does. Our steps are the solver's own ``linspace`` grid,
    which starts at t = 999: the DDIM config the pipeline inherits spaces them ``leading`` (from
    875 at 8 steps, skipping the noisiest eighth), so the test sets ``linspace`` there too."""
    from diffusers import DPMSolverMultistepScheduler

    from diffusion_transformer.sampling import sample_latents

    dit = _random_dit(in_channels=4, num_classes=1000)
    pipe = load_diffusers_pipeline(export_diffusers(dit, tmp_path / "pipe", vae=tiny_vae))
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(
        pipe.scheduler.config, timestep_spacing="linspace"
    )
    labels = [1, 2]
    theirs = pipe(
        class_labels=labels, num_inference_steps=8, guidance_scale=4.0, output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images  # fmt: skip
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    diffusion = {"objective": "ddpm", "noise_schedule": "linear", "diffusion_steps": 1000}
    ours = sample_latents(dit, diffusion, torch.tensor(labels), noise, "dpmpp_2m", 8, 4.0)
    decoded = pipe.vae.decode(ours / pipe.vae.config.scaling_factor).sample  # as the pipeline
    images = (decoded / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)
    torch.testing.assert_close(images, torch.as_tensor(theirs), rtol=0, atol=1e-5)
    ddim = sample_latents(dit, diffusion, torch.tensor(labels), noise, "ddim", 8, 4.0)
    assert not torch.allclose(ours, ddim, atol=1e-3)  # a sampler of its own
