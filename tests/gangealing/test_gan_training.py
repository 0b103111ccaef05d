"""StyleGAN2 training for GANgealing: losses, lazy regularisation, DiffAugment, data, the CLI."""

from __future__ import annotations

import math
import os
import re
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from PIL import Image

from common.checkpoint import safe_load
from gangealing.data.image_data import ImageDataModule, build_dataset, random_flip
from gangealing.stylegan2.diffaug import diff_augment, parse_policy
from gangealing.stylegan2.networks import load_generator
from gangealing.training.gan_module import (
    DEFAULT_EMA_DECAY,
    StyleGAN2Module,
    lazy_adam_hparams,
    path_length_penalty,
    r1_penalty,
)

CLI_OVERRIDES = [
    "model=stylegan2/tiny",
    "logger=none",
    "resolution=16",
    "batch_size=4",
    "data.num_images=16",
    "model.style_dim=16",
    "model.n_mlp=2",
    "model.channels={4:16,8:16,16:8}",
    "regularization.d_reg_every=2",
    "regularization.g_reg_every=2",
    "num_samples=4",
    "sample_every=1",
    "export_every=1",
    "checkpoint_every=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _fit(module: StyleGAN2Module, steps: int, root: Path, ckpt: Path | None = None) -> L.Trainer:
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(root),
    )
    data = ImageDataModule("astronaut", 16, 4, flip=True, num_workers=0, synthetic_size=16, seed=0)
    trainer.fit(module, datamodule=data, ckpt_path=str(ckpt) if ckpt else None)
    return trainer


def gan_module(*overrides: str) -> StyleGAN2Module:
    """The LightningModule ``gangealing.train_gan`` builds with ``overrides``."""
    with initialize_config_module("gangealing.conf", version_base="1.3"):
        return instantiate(compose("train_gan", overrides=list(overrides)).module)


def _tiny_module(*overrides: str) -> StyleGAN2Module:
    """A 16 px StyleGAN2 with R1 and path-length steps every second iteration."""
    torch.manual_seed(0)
    return gan_module(*CLI_OVERRIDES[:10], "sample_every=0", *overrides)


def _flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


# ---------------------------------------------------------------------------- training steps


def test_training_steps_update_g_d_ema_and_path_length(tmp_path, monkeypatch):
    import gangealing.training.gan_module as gan_module

    module = _tiny_module("augment=[color,translation,cutout]")
    g0, d0, e0 = _flat(module.generator), _flat(module.discriminator), _flat(module.g_ema)
    assert torch.equal(g0, e0)  # G_ema starts as a copy of G
    calls = {"r1": 0, "path": 0}

    def counted(name, fn):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(gan_module, "r1_penalty", counted("r1", r1_penalty))
    monkeypatch.setattr(gan_module, "path_length_penalty", counted("path", path_length_penalty))
    trainer = _fit(module, 3, tmp_path)
    # global_step counts iterations, not the D / R1 / path-length optimizer steps
    assert trainer.global_step == 3
    assert calls == {"r1": 2, "path": 2}  # lazy regularisation at steps 0 and 2
    g1, d1, e1 = _flat(module.generator), _flat(module.discriminator), _flat(module.g_ema)
    assert not torch.equal(g0, g1) and not torch.equal(d0, d1) and not torch.equal(e0, e1)
    assert not torch.equal(e1, g1)  # the EMA lags behind G
    assert module.mean_path_length.item() > 0
    metrics = trainer.callback_metrics
    for key in ("d_loss", "g_loss", "r1", "path_penalty", "path_length"):
        assert math.isfinite(metrics[f"train/{key}"].item()), key
    assert module.ema.decay == pytest.approx(0.5 ** (32 / 10_000)) == DEFAULT_EMA_DECAY


def test_lazy_regularization_adam_correction():
    lr, betas = lazy_adam_hparams(0.002, (0.0, 0.99), 16)
    assert lr == pytest.approx(0.002 * 16 / 17)
    assert betas == pytest.approx((0.0, 0.99 ** (16 / 17)))
    lr, betas = lazy_adam_hparams(0.002, (0.0, 0.99), 4)
    assert lr == pytest.approx(0.0016) and betas[1] == pytest.approx(0.99**0.8)
    assert lazy_adam_hparams(0.002, (0.0, 0.99), 0) == (0.002, (0.0, 0.99))
    module = gan_module(
        "resolution=8", "model.style_dim=16", "model.n_mlp=1", "model.channels={4:8,8:8}"
    )  # the recipe's lazy intervals: R1 every 16 iterations, path length every 4
    g_opt, d_opt = module.configure_optimizers()
    assert g_opt.param_groups[0]["lr"] == pytest.approx(0.002 * 4 / 5)
    assert d_opt.param_groups[0]["lr"] == pytest.approx(0.002 * 16 / 17)
    assert d_opt.param_groups[0]["betas"][1] == pytest.approx(0.99 ** (16 / 17))


def test_r1_and_path_length_oracles():
    # D(x) = <w, x>: grad_x D = w for every image, so R1 = ||w||^2
    w = torch.randn(3, 4, 4)
    x = torch.randn(5, 3, 4, 4, requires_grad=True)
    assert r1_penalty((x * w).sum((1, 2, 3)), x).item() == pytest.approx(w.pow(2).sum().item())
    # fake = sum_l A w_l (linear): J_{w_l}^T y = A^T y for every W+ layer l, so the path length
    # of image n is ||A^T y_n|| for the y drawn inside; the running mean moves by decay * (mean - a)
    latents = torch.randn(4, 3, 6, requires_grad=True)
    a = torch.randn(6, 3, 8, 8)
    fake = torch.einsum("nld,dchw->nchw", latents, a)
    torch.manual_seed(1)
    penalty, mean, lengths = path_length_penalty(fake, latents, torch.tensor(2.0), decay=0.01)
    torch.manual_seed(1)
    y = torch.randn_like(fake) / 8
    torch.testing.assert_close(lengths, torch.einsum("nchw,dchw->nd", y, a).norm(dim=1))
    assert mean.item() == pytest.approx(2.0 + 0.01 * (lengths.mean().item() - 2.0))
    assert penalty.item() == pytest.approx((lengths - mean).pow(2).mean().item())


def test_resume_is_exact(tmp_path):
    full = _tiny_module()
    _fit(full, 4, tmp_path / "full")
    first = _tiny_module()
    trainer = _fit(first, 2, tmp_path / "a")
    ckpt = tmp_path / "a" / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    assert "mean_path_length" in safe_load(ckpt)["state_dict"]
    resumed = _tiny_module()
    trainer = _fit(resumed, 4, tmp_path / "b", ckpt=ckpt)
    assert trainer.global_step == 4
    for a, b in ((full.generator, resumed.generator), (full.g_ema, resumed.g_ema)):
        torch.testing.assert_close(_flat(a), _flat(b))
    torch.testing.assert_close(full.mean_path_length, resumed.mean_path_length)


# ---------------------------------------------------------------------------- DiffAugment


def test_diffaugment_shapes_gradients_identity_and_seeding():
    x = torch.randn(4, 3, 16, 16, requires_grad=True)
    assert diff_augment(x, None) is x and diff_augment(x, "") is x
    y = diff_augment(x, "color,translation,cutout")
    assert y.shape == x.shape
    y.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    same = [
        diff_augment(x.detach(), "color,translation,cutout", torch.Generator().manual_seed(3))
        for _ in range(2)
    ]
    assert torch.equal(same[0], same[1])
    other = diff_augment(x.detach(), "color,translation,cutout", torch.Generator().manual_seed(4))
    assert not torch.equal(same[0], other)
    # translation and cutout only move pixels or zero them
    moved = diff_augment(x.detach(), "translation,cutout", torch.Generator().manual_seed(0))
    values = set(x.detach().flatten().tolist()) | {0.0}
    assert set(moved.flatten().tolist()) <= values
    with pytest.raises(ValueError, match="color,translation,cutout"):
        parse_policy("colour")


# ---------------------------------------------------------------------------- data


def test_builtin_dataset_and_flips():
    data = build_dataset("astronaut", 16, synthetic_size=8, seed=0)
    assert len(data) == 8
    item = data[3]
    assert item.shape == (3, 16, 16) and item.min() >= -1 and item.max() <= 1
    assert torch.equal(item, build_dataset("astronaut", 16, synthetic_size=8, seed=0)[3])
    assert not torch.equal(item, data[4])
    batch = torch.randn(64, 3, 4, 4)
    flipped = random_flip(batch, seed=1)
    assert torch.equal(flipped, random_flip(batch, seed=1))
    changed = (flipped != batch).flatten(1).any(1)
    assert 0 < changed.sum() < 64
    assert torch.equal(flipped[changed], batch[changed].flip(-1))


def test_image_folder_data_and_errors(tmp_path):
    with pytest.raises(ValueError, match="no images found .* put images there"):
        build_dataset(tmp_path, 16, None, 0)
    with pytest.raises(FileNotFoundError, match="does not exist; pass data=folder data.root="):
        build_dataset(tmp_path / "missing", 16, None, 0)
    Image.new("RGB", (40, 20), (255, 0, 0)).save(tmp_path / "b.png")
    data = build_dataset(tmp_path, 8, None, 0)
    torch.testing.assert_close(
        data[0], torch.tensor([1.0, -1.0, -1.0])[:, None, None].expand(3, 8, 8)
    )
    Image.new("LA", (8, 8)).save(tmp_path / "gray_alpha.png")
    data = build_dataset(tmp_path, 8, None, 0)
    with pytest.raises(ValueError, match=r"gray_alpha\.png has 2 channels .*convert\('RGB'\)"):
        data[1]


# ---------------------------------------------------------------------------- config and CLI


def test_config_composes():
    from omegaconf import open_dict

    with initialize_config_module("gangealing.conf", version_base="1.3"):
        paper = compose("train_gan", overrides=["model=stylegan2/paper", "augment=[color,cutout]"])
        tiny = compose("train_gan", overrides=["logger=none", *CLI_OVERRIDES[2:10]])
    assert paper.model.style_dim == 512 and paper.model.n_mlp == 8 and paper.model.channels is None
    assert paper.trainer._target_ == "lightning.pytorch.Trainer"
    assert "wandb" in paper.logger and tiny.logger == {}
    assert paper.regularization.r1_gamma == 10 and paper.optim.lr == 0.002
    assert paper.mixing == 0.9  # style-mixing probability of StyleGAN2 training
    module = instantiate(tiny.module)
    assert module.generator.size == 16 and module.augment == ()
    assert module.reg["d_reg_every"] == 2 and module.generator.style_dim == 16
    with open_dict(tiny):
        tiny.augment = paper.augment
    assert instantiate(tiny.module).augment == ("color", "cutout")
    with pytest.raises(InstantiationException, match="regularization has the keys"):
        instantiate(tiny.module, regularization={"gamma": 1.0})  # merged: one key too many


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "gangealing.train_gan", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_trains_exports_and_resumes(tmp_path):
    """A tiny run, its resume, then the next commands as printed: the ``gangealing.train`` that
    train_gan prints (plus ``trainer.max_steps=1``: as printed it trains 20,000 steps) and the
    ``gangealing.congeal`` that this run prints (exactly as printed)."""
    run = tmp_path / "run"
    out = _cli([*CLI_OVERRIDES, "trainer.max_steps=2", f"hydra.run.dir={run}"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    export = run / "stylegan2.pt"
    assert f"StyleGAN2     : {export}" in out.stdout and f"run directory : {run}" in out.stdout
    generator = load_generator(export)
    assert generator.size == 16 and generator.style_dim == 16
    ckpt = safe_load(run / "checkpoints" / "last.ckpt")
    state = safe_load(export)
    assert set(state) >= {"g_ema", "g", "d", "latent_avg", "args"}
    for key, value in state["g_ema"].items():
        torch.testing.assert_close(value, ckpt["state_dict"][f"ema.module.{key}"])
    assert (run / "samples" / "step0000002.png").is_file()
    first = (run / "checkpoints" / "step0000001.ckpt").stat().st_mtime_ns

    resumed = _cli(
        [*CLI_OVERRIDES, "trainer.max_steps=3", f"resume={run}", f"hydra.run.dir={tmp_path / 'r'}"],
        tmp_path,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "(step 3)" in resumed.stdout
    assert (run / "checkpoints" / "step0000003.ckpt").is_file()
    assert (run / "checkpoints" / "step0000001.ckpt").stat().st_mtime_ns == first
    assert safe_load(run / "checkpoints" / "last.ckpt")["global_step"] == 3
    resumed_g = load_generator(export)
    assert not np.allclose(_flat(resumed_g).numpy(), _flat(generator).numpy())

    # The next commands, run as printed: train_gan's gangealing.train (its 20,000 steps cut to
    # one with trainer.max_steps=1, the only key added), then the congeal command that prints.
    train = _printed(out.stdout, "gangealing.train")
    assert f"generator={export} resolution=16 model=stn/small" in train
    trained = _run_printed(train, tmp_path, "trainer.max_steps=1")
    assert "data.root= holds samples of the generator: put a folder of your own" in trained
    congeal = _printed(trained, "gangealing.congeal")
    assert congeal.endswith("size=16") and "data.root=" in congeal
    congealed = _run_printed(congeal, tmp_path)
    assert "average image" in congealed


def _printed(stdout: str, command: str) -> str:
    """The ``python -m <command> ...`` a run printed (up to the end of its parenthesis or a ;)."""
    match = re.search(rf"\((python -m {re.escape(command)} [^;)]*)", stdout)
    assert match, stdout[-2000:]
    return match[1]


def _run_printed(command: str, cwd: Path, *extra: str) -> str:
    args = shlex.split(command)
    assert args[:2] == ["python", "-m"]
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, *args[1:], *extra], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0 and "error:" not in proc.stderr, proc.stderr[-3000:]
    return proc.stdout


FOLDER_OVERRIDES = ["data=folder", *(o for o in CLI_OVERRIDES if not o.startswith("data."))]


def test_a_folder_without_a_readable_image_stops_before_training(cli_main, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"not a png")
    code, err = cli_main("gangealing.train_gan", *FOLDER_OVERRIDES, f"data.root={folder}")
    assert code == 2 and err.count("error:") == 1 and "Traceback" not in err
    assert f"no readable image in {folder}" in err
    assert not list(tmp_path.rglob("*.ckpt"))


def test_an_unreadable_image_in_a_worker_is_one_line_naming_it(cli_main, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (16, 16), (255, 0, 0)).save(folder / "a.png")
    (folder / "b.png").write_bytes(b"\x89PNG broken")
    args = [*FOLDER_OVERRIDES, f"data.root={folder}", "data.num_workers=1", "trainer.max_steps=2"]
    code, err = cli_main("gangealing.train_gan", *args)
    assert code == 2 and err.count("error:") == 1 and "Traceback" not in err
    assert f"cannot read the image {folder / 'b.png'}" in err
