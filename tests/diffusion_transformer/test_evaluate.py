"""Evaluation (thesis Sec. 2.5): the evaluate CLI, its errors, and evaluation during training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from common.data.digits import load_digits
from common.data.images import to_uint8
from diffusion_transformer.metrics import evaluate, load_samples, resolve_reference
from diffusion_transformer.training import train

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("metrics_cache")


@pytest.fixture(scope="module")
def digits_npz(tmp_path_factory):
    """Real digits in the sampler's .npz format (arr_0 uint8 N x H x W x C, labels)."""
    images, labels = load_digits(8)
    path = tmp_path_factory.mktemp("samples") / "real.npz"
    np.savez(path, arr_0=to_uint8(images[1::2]), labels=labels[1::2].numpy())
    return path


def compose_eval(*overrides: str):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("diffusion_transformer.conf", version_base="1.3"):
            return compose("evaluate", overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


def test_evaluate_scores_real_digits_well_and_noise_badly(digits_npz, cache_dir, tmp_path):
    common = [
        "reference=digits",
        "metrics.names=[fd_digits,acc_digits,precision_digits,recall_digits]",
        f"metrics.cache_dir={cache_dir}",
        "device=cpu",
    ]
    real = evaluate(compose_eval(f"samples={digits_npz}", f"out={tmp_path}/real", *common))
    rng = np.random.default_rng(0)
    noise_path = tmp_path / "noise.npz"
    noise = rng.integers(0, 256, (500, 8, 8, 1), dtype=np.uint8)
    np.savez(noise_path, arr_0=noise, labels=rng.integers(0, 10, 500))
    bad = evaluate(compose_eval(f"samples={noise_path}", f"out={tmp_path}/noise", *common))
    assert real["acc_digits"] > 0.95 and bad["acc_digits"] < 0.3
    assert real["fd_digits"] < 0.05 * bad["fd_digits"]
    assert real["precision_digits"] > 0.9 and bad["precision_digits"] < 0.1
    record = json.loads((tmp_path / "real" / "metrics.json").read_text())
    assert record["fd_digits"] == pytest.approx(real["fd_digits"])
    assert record["reference"] == "digits"


def test_digits_reference_follows_the_sample_resolution(cache_dir, tmp_path):
    """Digits trained at 16x16 are judged against digits rendered the same way: real 16x16
    digits score as well as real 8x8 ones (against 8x8 originals they would score about 360)."""
    images16, labels = load_digits(16)
    path = tmp_path / "real16.npz"
    np.savez(path, arr_0=to_uint8(images16[1::2]), labels=labels[1::2].numpy())
    common = ["reference=digits", "metrics.names=[fd_digits]", f"metrics.cache_dir={cache_dir}"]
    real16 = evaluate(compose_eval(f"samples={path}", f"out={tmp_path}/a", *common))
    assert real16["fd_digits"] < 5.0
    assert resolve_reference("digits", image_size=16).shape == (1797, 16, 16, 3)


def test_evaluate_cli_reads_an_image_folder(digits_npz, cache_dir, tmp_path):
    from PIL import Image

    with np.load(digits_npz) as data:
        images = data["arr_0"][:64]
    folder = tmp_path / "folder"
    folder.mkdir()
    for i, img in enumerate(images):
        Image.fromarray(img[..., 0]).save(folder / f"{i:03d}.png")
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "diffusion_transformer.evaluate",
            f"samples={folder}",
            "reference=digits",
            "metrics.names=[fd_digits,is_digits]",
            f"metrics.cache_dir={cache_dir}",
            f"hydra.run.dir={tmp_path}/out",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fd_digits" in proc.stdout and "metrics json" in proc.stdout
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["is_digits"] > 3  # confident, varied classes (10 splits of 6 images: at most 6)
    assert metrics["fd_digits"] >= 0


def test_evaluate_errors_name_the_fix(digits_npz, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # no weights there
    with pytest.raises(FileNotFoundError, match="weights-inception-2015-12-05-6726825d.pth") as e:
        evaluate(
            compose_eval(
                f"samples={digits_npz}", "reference=digits", "metrics.names=[fid]",
                f"out={tmp_path}", "device=cpu",
            )
        )  # fmt: skip
    assert "metrics.inception_weights" in str(e.value)
    with pytest.raises(ValueError, match="reference=digits"):
        resolve_reference(None)
    with pytest.raises(FileNotFoundError, match="an .npz .* or an image folder"):
        resolve_reference(str(tmp_path / "missing.npz"))
    with pytest.raises(ValueError, match="samples=<.npz"):
        load_samples(None)
    with pytest.raises(FileNotFoundError, match="do not exist"):
        load_samples(str(tmp_path / "nothing.npz"))
    np.savez(tmp_path / "wrong.npz", images=np.zeros((2, 8, 8, 1), np.uint8))
    with pytest.raises(ValueError, match="no arr_0"):
        load_samples(str(tmp_path / "wrong.npz"))
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate(
            compose_eval(
                f"samples={digits_npz}", "reference=digits", "metrics.names=[fud]",
                f"out={tmp_path}", "device=cpu",
            )
        )  # fmt: skip


def test_training_evaluates_the_ema_and_records_the_run(compose_train, cache_dir, tmp_path):
    result = train(
        compose_train(
            "model.depth=1",
            "model.hidden_size=32",
            "model.num_heads=2",
            "patch=4",
            "batch_size=8",
            "logger=csv",
            "trainer.log_every_n_steps=1",
            "trainer.enable_progress_bar=false",
            "trainer.max_steps=4",
            "sample_every=2",
            "diffusion.sampling_steps=4",
            "eval.num_samples=20",
            "eval.batch_size=10",
            "eval.final_samplers={ddim:[2],dpmpp_2m:[3]}",
            f"metrics.cache_dir={cache_dir}",
            f"run_dir={tmp_path}",
        )
    )
    rows = [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    keys = {(r["step"], r["metric"], r["sampler"], r["sampling_steps"], r["final"]) for r in rows}
    assert keys == {
        (2, "fd_digits", "ddim", 4, False),
        (2, "acc_digits", "ddim", 4, False),
        (4, "fd_digits", "ddim", 4, True),
        (4, "acc_digits", "ddim", 4, True),
        (4, "fd_digits", "ddim", 2, True),  # the Fig. 2.11 axis: the final model at other steps
        (4, "acc_digits", "ddim", 2, True),
        (4, "fd_digits", "dpmpp_2m", 3, True),  # and with other samplers (eval.final_samplers)
        (4, "acc_digits", "dpmpp_2m", 3, True),
    }
    gflops = result.module.model.gflops()
    for r in rows:
        assert r["num_samples"] == 20 and r["model"] == "tiny" and r["patch"] == 4
        assert r["gflops"] == pytest.approx(gflops)
        assert r["train_compute"] == pytest.approx(gflops * 8 * r["step"] * 3)  # Sec. 2.5
        assert r["nfe"] == r["sampling_steps"]  # counted: one network call per step
        assert r["sampling_compute"] == pytest.approx(gflops * r["sampling_steps"] * 2)  # cfg 1.5
        assert r["value"] >= 0
    # Training CPU time: grows with the steps; evaluations do not count (the final model's
    # evaluations all see the same time).
    cpu = {r["step"]: r["cpu_seconds"] for r in rows}
    assert 0 < cpu[2] < cpu[4]
    assert len({r["cpu_seconds"] for r in rows if r["step"] == 4}) == 1
    summary = json.loads((tmp_path / "run_summary.json").read_text())
    assert summary["name"] == "DiT-tiny/4" and summary["step"] == 4
    assert summary["global_batch"] == 8 and summary["gflops"] == pytest.approx(gflops)
    metrics_csv = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "eval/fd_digits" in metrics_csv and "eval/fd_digits@2steps" in metrics_csv
    assert "eval/fd_digits@dpmpp_2m3" in metrics_csv


def test_sample_prints_the_evaluate_command_the_run_recorded():
    """``sampling.evaluate_command``: the recorded reference, else the image folder the run
    trained on; the recorded Inception weights; a placeholder only for what nothing records."""
    from types import SimpleNamespace

    from diffusion_transformer.sampling import evaluate_command

    latent = SimpleNamespace(in_channels=4, input_size=32, num_classes=1000)
    folder = {"reference": None, "images": "/data/train", "metrics": ["fid"],
              "inception_weights": "/w/inception.pth"}  # fmt: skip
    assert evaluate_command("s.npz", latent, {"evaluate": folder}) == (
        "python -m diffusion_transformer.evaluate samples=s.npz reference=/data/train "
        "metrics.names=[fid] metrics.inception_weights=/w/inception.pth"
    )
    stats = {**folder, "reference": "/ref/VIRTUAL_imagenet256_labeled.npz"}
    assert "reference=/ref/VIRTUAL_imagenet256_labeled.npz" in evaluate_command(
        "s.npz", latent, {"evaluate": stats}
    )
    official = evaluate_command("s.npz", latent, {})  # an official file records nothing
    assert "reference=<reference .npz or image folder>" in official
    assert "metrics.inception_weights=<weights-inception-2015-12-05-6726825d.pth>" in official
    digits = SimpleNamespace(in_channels=1, input_size=8, num_classes=10)
    assert evaluate_command("s.npz", digits, {}).endswith(
        "reference=digits metrics.names=[fd_digits,acc_digits]"
    )
