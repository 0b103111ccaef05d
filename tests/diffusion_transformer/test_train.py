"""Training wiring: tiny runs through the real entry point, resume equivalence, logging, EMA."""

import csv
from pathlib import Path

import pytest
import torch

from common.checkpoint import safe_load
from common.training import resolve_resume
from diffusion_transformer.checkpoints import read_checkpoint, read_record
from diffusion_transformer.training import train

TINY = [
    "model.depth=1",
    "model.hidden_size=32",
    "model.num_heads=2",
    "batch_size=8",
    "logger=csv",
    "callbacks=none",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]


def read_losses(run_dir: Path) -> dict[int, float]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return {
            int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r["train/loss"]
        }


def test_resume_equals_an_uninterrupted_run(compose_train, tmp_path):
    straight = train(compose_train(*TINY, "trainer.max_steps=4", f"run_dir={tmp_path}/a"))
    first = train(compose_train(*TINY, "trainer.max_steps=2", f"run_dir={tmp_path}/b"))
    assert first.checkpoint.is_file()
    resumed = train(
        compose_train(
            *TINY, "trainer.max_steps=4", f"run_dir={tmp_path}/ignored", f"resume={tmp_path}/b"
        )
    )
    assert resumed.run_dir == tmp_path / "b"
    a, b = straight.module, resumed.module
    assert a.trainer.global_step == b.trainer.global_step == 4
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name  # model and EMA
    opt_a = a.trainer.optimizers[0].state_dict()["state"]
    opt_b = b.trainer.optimizers[0].state_dict()["state"]
    for k in opt_a:
        assert torch.equal(opt_a[k]["exp_avg"], opt_b[k]["exp_avg"])
    # The resumed run appended to the same loss curve, which equals the uninterrupted one.
    assert read_losses(tmp_path / "b") == pytest.approx(read_losses(tmp_path / "a"), rel=1e-6)
    assert len(read_losses(tmp_path / "b")) == 4
    # The W&B run id is kept with the run directory.
    assert (tmp_path / "b" / "run_id.txt").read_text() == (
        tmp_path / "b" / "run_id.txt"
    ).read_text()


def test_checkpoint_holds_ema_and_loads_without_pickle(compose_train, tmp_path):
    result = train(
        compose_train(*TINY, "trainer.max_steps=3", "ema_decay=0.5", f"run_dir={tmp_path}")
    )
    ckpt = safe_load(result.checkpoint)  # weights_only=True
    sd = ckpt["state_dict"]
    assert any(k.startswith("ema.module.") for k in sd) and ckpt["global_step"] == 3
    # The DiT's constructor arguments, which load_dit rebuilds it from.
    assert ckpt["hyper_parameters"]["model"]["hidden_size"] == 32
    assert ckpt["hyper_parameters"]["model"]["depth"] == 1 and "dit_config" not in ckpt
    # Both files record how the run scored its samples, for the evaluate command sample prints.
    recorded = read_checkpoint(result.checkpoint)[1]["evaluate"]
    assert recorded == read_record(result.export)["evaluate"] and recorded["reference"] == "digits"
    assert recorded["metrics"] == ["fd_digits", "acc_digits"] and recorded["images"] is None
    ema = safe_load(result.export)
    assert set(ema) == {k[len("ema.module.") :] for k in sd if k.startswith("ema.module.")}
    # After 3 updates at decay 0.5 the EMA differs from both the init and the model.
    w = "blocks.0.mlp.fc1.weight"
    assert not torch.equal(ema[w], sd[f"model.{w}"])


def test_flow_objective_and_learned_sigma_logging(compose_train, tmp_path):
    result = train(
        compose_train(*TINY, "trainer.max_steps=2", "diffusion=flow", f"run_dir={tmp_path}/flow")
    )
    metrics = (tmp_path / "flow" / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "train/mse" in metrics and "train/vb" not in metrics
    labels = torch.tensor([0, 1])
    images = result.module.generate(labels, steps=3)
    assert images.shape == (2, 1, 8, 8) and torch.isfinite(images).all()
    ddpm = train(compose_train(*TINY, "trainer.max_steps=2", f"run_dir={tmp_path}/ddpm"))
    header = (tmp_path / "ddpm" / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "train/vb" in header and "train/mse" in header
    few_step = ddpm.module.generate(labels, sampler="dpmpp_2m", steps=3, cfg_scale=2.0)
    assert few_step.shape == (2, 1, 8, 8) and torch.isfinite(few_step).all()  # issue 30's sampler
    assert ddpm.module.generate(labels, sampler="ddim", steps=3, cfg_scale=2.0).shape == (
        2,
        1,
        8,
        8,
    )


def test_resume_errors_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoints/last.ckpt"):
        resolve_resume(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        resolve_resume(str(tmp_path / "x.ckpt"))


def test_patch_that_does_not_divide_the_image_is_named(compose_train, tmp_path):
    with pytest.raises(Exception, match="patch size 3 does not divide the input size 8"):
        train(compose_train(*TINY, "patch=3", f"run_dir={tmp_path}"))
