"""GANgealing training (thesis Sec. 4.3, Eqs. 4.3-4.6) on a tiny random StyleGAN2."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from common.checkpoint import safe_load
from gangealing.align.transformers import SmallTransformers
from gangealing.stylegan2.networks import Generator, save_generator
from gangealing.training.module import GangealingModule, generator_fingerprint
from tests.integration.conftest import run_cli

TINY_G = {"size": 16, "style_dim": 16, "n_mlp": 2, "channels": {4: 16, 8: 16, 16: 8}}
# the small CPU trunk; the released architecture is tested in test_paper_transform.py
CLI_TINY = [
    "model=stn/small",
    "resolution=16",
    "model.widths=[8,8]",
    "model.flow_size=4",
    "cutoff=3",
    "pca_samples=512",
    "loss.name=pyramid_l1",
    "psi_anneal_steps=2",
    "batch_size=4",
    "logger=none",
    "trainer.enable_progress_bar=false",
]


def train_config(generator, *overrides: str):
    """The composed config of ``python -m gangealing.train`` with ``overrides``."""
    with initialize_config_module("gangealing.conf", version_base="1.3"):
        return compose("train", overrides=[f"generator={generator}", *overrides])


def train_module(generator, *overrides: str) -> GangealingModule:
    """The LightningModule ``gangealing.train`` builds with ``overrides`` (an error in it raised
    as itself, not wrapped by Hydra)."""
    try:
        return instantiate(train_config(generator, *overrides).module)
    except InstantiationException as err:
        raise err.__cause__ from None


def tiny_module(generator, *overrides: str) -> GangealingModule:
    """:func:`train_module` with the small trunk of ``CLI_TINY``."""
    return train_module(generator, *CLI_TINY, *overrides)


def _generator_file(path, seed: int = 0):
    torch.manual_seed(seed)
    save_generator(path, Generator(**TINY_G))
    return path


@pytest.fixture
def generator_path(tmp_path):
    return _generator_file(tmp_path / "g.pt")


def _trainer(steps: int) -> L.Trainer:
    return L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def test_unknown_transform_names_the_choices():
    with pytest.raises(ValueError, match="similarity"):
        SmallTransformers("affine", 1, 16, [8], 4, "reflection")


def test_fresh_transformers_are_the_identity_and_pairs_have_the_right_shapes(generator_path):
    module = tiny_module(generator_path, "num_modes=2")
    x, y = module.pairs(4, psi=0.0)
    assert x.shape == (4, 3, 16, 16) and y.shape == (4, 2, 3, 16, 16)
    for stn in module.stns:
        torch.testing.assert_close(stn(x).image, x, atol=1e-5, rtol=0)
    # the generator is frozen; only the transformers and the mode coefficients learn
    trainable = {n.split(".")[0] for n, p in module.named_parameters() if p.requires_grad}
    assert trainable == {"target", "stns"}


def test_alignment_loss_takes_the_min_over_modes_and_flips(generator_path):
    """Eq. 4.6: per sample, the candidate (mode k, optionally the mirrored input) with the
    smallest distance is the one trained."""
    torch.manual_seed(0)
    module = tiny_module(generator_path, "num_modes=2", "flips=true")
    module.on_fit_start()  # PCA of W and K-means++ modes
    assert not torch.allclose(module.target.modes()[0], module.target.modes()[1])
    x, y = module.pairs(4, psi=0.0)
    out = module.alignment_losses(module.stns, x, y)
    candidates = torch.stack(
        [module.distance(img, y[:, k]) for img in (x, x.flip(-1)) for k in range(2)], 1
    )  # fresh transformers are the identity and have no flow penalty
    torch.testing.assert_close(out["distance"], candidates.min(1).values.mean())
    assert torch.equal(out["assignment"], candidates.argmin(1))
    out["loss"].backward()
    assert module.target.coefficients.grad.abs().sum() > 0
    head = module.stns[0].flow.head[-1].weight.grad
    assert head is not None and head.abs().sum() > 0


def test_training_learns_mode_and_transformers_and_resumes_without_refitting(generator_path):
    module = tiny_module(generator_path)
    _trainer(3).fit(module)
    assert bool(module.target_initialised) and module.target.w_mean.abs().sum() > 0
    assert module.target.coefficients.abs().sum() > 0
    sim_head = module.stns[0].similarity.head[-1].weight
    assert sim_head.abs().sum() > 0
    ema_head = module.stn_ema.module[0].similarity.head[-1].weight
    assert not torch.equal(ema_head, sim_head) and ema_head.abs().sum() > 0
    export = module.export()
    assert export["generator"]["fingerprint"] == generator_fingerprint(module.generator)
    assert set(export["target"]) == {"w_mean", "directions", "coefficients"}
    assert export["config"]["model"]["_target_"].endswith("SmallTransformers")


def test_cli_trains_exports_and_refuses_to_resume_with_another_generator(tmp_path):
    g = _generator_file(tmp_path / "g.pt")
    run_dir = tmp_path / "run"
    args = [f"generator={g}", *CLI_TINY, f"hydra.run.dir={run_dir}"]
    out = run_cli("gangealing.train", *args, "trainer.max_steps=2", cwd=tmp_path).stdout
    assert "congealer.pt" in out
    congealer = safe_load(run_dir / "congealer.pt")
    assert congealer["format"] == "gangealing-congealer-v1"
    assert congealer["config"]["size"] == 16 and "g_ema" in congealer
    first = safe_load(run_dir / "checkpoints" / "last.ckpt")["state_dict"]
    run_cli("gangealing.train", *args, "trainer.max_steps=3", f"resume={run_dir}", cwd=tmp_path)
    ckpt = safe_load(run_dir / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 3
    # the PCA of W was fitted once: resuming keeps it
    torch.testing.assert_close(ckpt["state_dict"]["target.w_mean"], first["target.w_mean"])

    other = _generator_file(tmp_path / "other.pt", seed=1)
    proc = run_cli(
        "gangealing.train",
        f"generator={other}",
        *CLI_TINY,
        f"hydra.run.dir={run_dir}",
        "trainer.max_steps=4",
        f"resume={run_dir}",
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode != 0
    assert "trained with another generator" in proc.stderr and "generator= file" in proc.stderr


def test_train_config_defaults_are_the_thesis_settings(generator_path):
    """Sec. 4.3-4.4 defaults: N = 1 principal direction, cutoff 5, lambda_TV 1000, lambda_I 1,
    Adam with STN lr 1e-3 and mode lr 1e-2, STN EMA; ``loss.checkpoint_path`` reaches ssl_vgg."""
    cfg = train_config(generator_path)
    assert (cfg.num_components, cfg.cutoff, cfg.num_modes) == (1, 5, 1)
    assert (cfg.tv_weight, cfg.identity_weight) == (1000.0, 1.0)
    assert cfg.model._target_ == "gangealing.align.official_stn.OfficialComposedSTN"
    assert (cfg.optim.lr, cfg.optim.mode_lr, cfg.ema_decay) == (1e-3, 1e-2, 0.999)
    with pytest.raises(FileNotFoundError, match="checkpoint_path='x', which is not a file"):
        tiny_module(generator_path, "loss.name=ssl_vgg", "loss.checkpoint_path=x")
    module = tiny_module(generator_path)
    module.trainer = L.Trainer(max_steps=10, logger=False, enable_progress_bar=False)
    groups = module.configure_optimizers()["optimizer"].param_groups
    assert [g["lr"] for g in groups] == [1e-3, 1e-2]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in module.target.parameters()}


def test_aligning_above_the_generator_resolution_warns(generator_path):
    with pytest.warns(UserWarning, match="resolution=32 exceeds the 16px output"):
        tiny_module(generator_path, "resolution=32")


def test_train_gan_data_is_a_group(run_main, tmp_path):
    """``data=photo|folder`` like DiT's ``data=``; the folder's images at ``data.root``."""
    import yaml

    def job(*args: str) -> tuple[dict, str]:
        _, out, err = run_main("gangealing.train_gan", *args, "--cfg", "job")
        return yaml.safe_load(out)["data"], err

    data, _ = job("data=folder", f"data.root={tmp_path}")
    assert (data["name"], data["root"]) == ("folder", str(tmp_path))
    assert data["datamodule"]["data"] == "${data.root}"
    data, _ = job("data.image=chelsea", "data.flip=false", "data.num_images=8")
    assert (data["name"], data["image"], data["flip"], data["num_images"]) == (
        "photo", "chelsea", False, 8,
    )  # fmt: skip


def test_experiment_synthetic_selects_the_small_similarity_trunk():
    cfg = train_config("g.pt", "experiment=synthetic")
    assert (cfg.model.transform, cfg.module.model.transform) == ("similarity",) * 2
    assert (cfg.resolution, cfg.model.input_size) == (32, 32)
    assert list(cfg.model.widths) == [32, 64, 128, 256] and "channel_multiplier" not in cfg.model


def test_a_small_trunk_flow_size_below_one_is_refused(generator_path):
    with pytest.raises(ValueError, match="model.flow_size=0 must be at least 1"):
        tiny_module(generator_path, "model.flow_size=0")


def test_sample_from_full_res_with_the_small_trunk_is_one_line(generator_path, cli_main):
    code, err = cli_main(
        "gangealing.train", f"generator={generator_path}", *CLI_TINY, "sample_from_full_res=true"
    )
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("error: sample_from_full_res=true needs the released transformer"), err
