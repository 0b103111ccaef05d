"""The DiT family's recipes train here at tiny sizes on digits on the CPU: SiT's objective,
REPA's (with its projection loss against the project's digits encoder, logged apart) and
LightningDiT's blocks and loss; the runs' files sample with the recipe's own sampler."""

from __future__ import annotations

import csv

import pytest
import torch

from diffusion_transformer.checkpoints import load_dit
from diffusion_transformer.module import DiTModule
from diffusion_transformer.training import train
from tests.diffusion_transformer.test_train import TINY

RECIPES = {
    "sit": ["diffusion=sit"],
    "repa": ["diffusion=repa", "repa=digits", "repa.projector_hidden=16"],
    "lightningdit": ["diffusion=lightningdit", "block=lightningdit", "patch=1"],
}


@pytest.mark.parametrize("recipe", RECIPES)
def test_each_recipe_trains_on_digits_and_samples(compose_train, tmp_path, recipe):
    run = tmp_path / recipe
    cfg = compose_train(*TINY, *RECIPES[recipe], "trainer.max_steps=2", f"run_dir={run}")
    result = train(cfg)
    with open(run / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    logged = {k for row in rows for k, v in row.items() if v}
    expected = {"train/loss", "train/mse"} | {
        "repa": {"train/proj"},
        "lightningdit": {"train/cos"},
    }.get(recipe, set())
    assert expected <= logged, logged  # fmt: skip
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    model, meta = load_dit(result.export)  # ema.pt records the architecture and the objective
    assert meta["diffusion"]["preset"] == recipe
    assert bool(model.projector_dims) == (recipe == "repa")
    assert model.config["use_rope"] == (recipe == "lightningdit") and model.patch_size == (
        1 if recipe == "lightningdit" else 2
    )
    images = result.module.generate(torch.tensor([0, 1]), steps=2, cfg_scale=2.0)
    assert images.shape == (2, 1, 8, 8) and torch.isfinite(images).all()


def test_repa_trains_the_thesis_ddpm_objective_too(compose_train, tmp_path):
    """REPA's projection loss is added to DiT's hybrid loss as to a transport's (issue 30's
    ablation adds each ingredient alone to the thesis recipe): logged as train/proj, weighed by
    repa.coeff into train/loss."""
    cfg = compose_train(*TINY, "repa=digits", "repa.projector_hidden=16", "trainer.max_steps=2",
                        "trainer.log_every_n_steps=1", f"run_dir={tmp_path}")  # fmt: skip
    train(cfg)
    with open(tmp_path / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/proj")]
    assert rows
    for r in rows:
        loss, mse, vb, proj = (float(r[f"train/{k}"]) for k in ("loss", "mse", "vb", "proj"))
        assert -1 <= proj <= 1 and loss == pytest.approx(mse + vb + 0.5 * proj, rel=1e-5)


def test_repa_refuses_what_it_cannot_train(compose_train):
    """REPA needs projectors that fit its encoder."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    wrong = compose_train(*TINY, "diffusion=repa", "repa=digits", "repa.z_dims=[32]")
    with pytest.raises(InstantiationException, match=r"does not fit digits_convnet's 64-wide"):
        instantiate(wrong.module)
    assert isinstance(instantiate(compose_train(*TINY, "diffusion=repa").module), DiTModule)


def test_repa_on_latent_shards_needs_their_images(cli_main, compose_train, tmp_path):
    """Shards extracted without ``crops=true`` are refused before training; with them, the
    encoder sees each latent's own image, flipped exactly when the latent is the flipped one."""
    from hydra.utils import instantiate
    from safetensors.torch import save_file

    save_file({"latents": torch.randn(2, 2, 4, 2, 2), "labels": torch.tensor([0, 1])},
              tmp_path / "s.safetensors")  # fmt: skip
    (tmp_path / "manifest.json").write_text('{"shards": [{"file": "s.safetensors", "num": 2}]}')
    code, err = cli_main(
        "diffusion_transformer.train", "data=imagenet_latents", f"data.root={tmp_path}",
        "data.vae.path=/v", "diffusion=repa", "repa=digits", "logger=none",
    )  # fmt: skip
    assert code == 2 and err.count("error:") == 1 and "Traceback" not in err
    assert "these latent shards hold none; extract them with extract_latents ... crops=true" in err

    module = instantiate(compose_train(*TINY, "data.flip=true").module)
    latents = torch.randn(64, 2, 1, 8, 8)
    crops = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8)
    x, images = module._prepare(latents, crops)
    flipped = (x == latents[:, 1]).flatten(1).all(1)
    assert 0 < flipped.sum() < 64 and (flipped | (x == latents[:, 0]).flatten(1).all(1)).all()
    as_float = crops.float() / 127.5 - 1
    expected = torch.where(flipped.view(-1, 1, 1, 1), as_float.flip(-1), as_float)
    assert torch.equal(images, expected)


def test_ddpm_guides_only_inside_its_interval(compose_train):
    """DDPM measures the interval in ``timestep / 1000``: [0, 1] is plain guidance, an interval
    past the schedule is no guidance at all (``common.diffusion.guidance.Guidance``)."""
    from hydra.utils import instantiate

    from diffusion_transformer.sampling import sample_latents

    cfg = compose_train(*TINY)
    model = instantiate(cfg.model).eval()
    for p in model.parameters():  # a model whose output depends on the label (no zero init)
        torch.nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(p.numel()))
    y, noise = (
        torch.tensor([1, 2]),
        torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)),
    )
    diffusion = dict(cfg.diffusion)

    def run(**kw):
        g = torch.Generator().manual_seed(1)
        return sample_latents(model, diffusion, y, noise, "ddpm", 4, generator=g, **kw)

    guided = run(cfg_scale=3.0)
    torch.testing.assert_close(run(cfg_scale=3.0, cfg_interval=(0.0, 1.0)), guided)
    torch.testing.assert_close(run(cfg_scale=3.0, cfg_interval=(1.5, 2.0)), run())
    assert not torch.allclose(guided, run())
