"""The real entry points, run as users run them, on tiny configs (W&B disabled)."""

import json
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tests.faults.conftest import NO_TRACEBACK
from tests.integration.conftest import TINY, run_cli


def test_train_then_sample_from_the_checkpoint(tmp_path):
    out = train_out = run_cli(
        "diffusion_transformer.train",
        *TINY,
        "trainer.max_steps=2",
        "logger=csv",
        "trainer.log_every_n_steps=1",
        "diffusion.sampling_steps=2",
        "hydra.run.dir=run",
        cwd=tmp_path,
    ).stdout
    assert "samples       :" in out and "checkpoint    :" in out
    run = tmp_path / "run"
    assert (run / "checkpoints" / "last.ckpt").is_file() and (
        run / "samples" / "final.png"
    ).is_file()
    assert (run / "csv" / "metrics.csv").is_file() and (run / ".hydra" / "config.yaml").is_file()

    out = run_cli(
        "diffusion_transformer.sample",
        f"ckpt={run}/checkpoints/last.ckpt",
        "num_samples=2",
        "batch_size=2",
        "sampling_steps=3",
        "labels=[3,7]",
        "progress=false",
        "hydra.run.dir=samples",
        cwd=tmp_path,
    ).stdout
    data = np.load(tmp_path / "samples" / "samples.npz")
    assert data["arr_0"].shape == (2, 8, 8, 3) and data["arr_0"].dtype == np.uint8
    assert data["labels"].tolist() == [3, 7]
    assert Image.open(tmp_path / "samples" / "grid.png").size[0] >= 16
    # The exported EMA weights (official key names, architecture recorded): the command train
    # prints runs as printed, then the evaluate command that sample prints.
    out = run_printed(train_out, "diffusion_transformer.sample", cwd=tmp_path).stdout
    npz = tmp_path / out.split("samples npz : ")[1].split()[0]
    assert np.load(npz)["arr_0"].shape == (16, 8, 8, 3)
    out = run_printed(out, "diffusion_transformer.evaluate", cwd=tmp_path).stdout
    assert "fd_digits" in out and list((tmp_path / "outputs").rglob("metrics.json"))
    # export_diffusers as the README shows it, then the Python lines it prints.
    proc = run_cli(
        "diffusion_transformer.export_diffusers",
        f"ckpt={run}/checkpoints/ema.pt",
        "out=exports/my_dit",
        cwd=tmp_path,
    )
    assert "accelerate" not in proc.stdout + proc.stderr
    snippet = proc.stdout.split('python -c "')[1].split('"')[0]
    assert "load_diffusers_transformer('exports/my_dit')" in snippet
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    loaded = subprocess.run(
        [sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    assert loaded.returncode == 0 and "accelerate" not in loaded.stderr, loaded.stderr


def run_printed(stdout: str, module: str, cwd, *extra: str):
    """Run the ``python -m <module> ...`` command a previous command printed, as printed (plus
    ``extra`` overrides)."""
    line = next(line for line in stdout.splitlines() if f"python -m {module} " in line)
    args = shlex.split(line.split(f"python -m {module} ")[1].rstrip(")"))
    return run_cli(module, *args, *extra, cwd=cwd)


def test_cli_errors_name_the_fix(cli_main, image_folder):
    """Each error is one line with the fix, exit code 2 (in-process: see tests/faults); a missing
    input folder is refused before the network is built or training starts."""
    cases = [
        ("diffusion_transformer.train", [*TINY, "patch=3"], "patch size 3 does not divide"),
        ("diffusion_transformer.train", ["model=huge"], "Available options"),
        ("diffusion_transformer.sample", ["ckpt=missing.ckpt"], "checkpoint not found"),
        (
            "diffusion_transformer.train",
            ["data=imagenet", "data.root=/nonexistent", "data.vae.path=/no/vae"],
            "image folder /nonexistent does not exist",
        ),
        (
            "diffusion_transformer.train",
            ["data=imagenet", f"data.root={image_folder}", "data.vae.path=/no/vae"],
            "no VAE at /no/vae",
        ),
        ("diffusion_transformer.train", [*TINY, "resume=nowhere"], "cannot resume"),
        (  # every sampler the evaluations would run is checked before training
            "diffusion_transformer.train",
            [*TINY, "eval.final_samplers={euler:[8]}"],
            "eval.final_samplers.euler: sampler 'euler' does not apply to a diffusion (ddpm)",
        ),
        (
            "diffusion_transformer.train",
            [*TINY, "eval.final_samplers={ddim:8}"],
            "eval.final_samplers.ddim=8 is not a list of step counts",
        ),
        ("diffusion_transformer.train", [*TINY, "eval.final_samplers={ddim:[0]}"], "at least 1"),
        ("diffusion_transformer.train", [*TINY, "eval.sampler=heun"], "eval.sampler: sampler"),
        (
            "diffusion_transformer.train",
            [*TINY, "eval.cfg_scale=1", "eval.cfg_interval=[0,0.5]"],
            "eval.cfg_interval=[0, 0.5] is ignored because eval.cfg_scale=1 does not guide",
        ),
    ]
    for module, args, phrase in cases:
        code, err = cli_main(module, *args)
        assert code == 2 and phrase in err.strip().splitlines()[-1], err


def test_extract_latents_train_on_them_and_decode_samples(tmp_path, image_folder, tiny_vae):
    proc = run_cli(
        "diffusion_transformer.extract_latents",
        f"data.root={image_folder}",
        f"vae={tiny_vae}",
        "out=latents",
        "image_size=16",
        "shard_size=4",
        "crops=true",
        "batch_size=3",
        "num_workers=0",
        "progress=false",
        cwd=tmp_path,
    )
    assert "skipped unreadable image" in proc.stdout and "broken.jpg" in proc.stdout
    manifest = json.loads((tmp_path / "latents" / "manifest.json").read_text())
    assert manifest["num"] == 10 and len(manifest["shards"]) == 3
    assert manifest["latent_shape"] == [2, 4, 8, 8] and len(manifest["skipped"]) == 1
    from diffusion_transformer.data import LatentShardDataset  # crops=true: images for REPA

    latents, label, crop = LatentShardDataset(tmp_path / "latents")[0]
    assert latents.shape == (2, 4, 8, 8) and crop.shape == (3, 16, 16) and crop.dtype == torch.uint8
    assert (tmp_path / "latents" / "extract_latents.log").is_file()  # the run folder is out=
    assert not (tmp_path / "outputs").exists()
    # Re-running keeps the finished shards (resumable) and gives the same manifest.
    run_cli(
        "diffusion_transformer.extract_latents",
        f"data.root={image_folder}",
        f"vae={tiny_vae}",
        "out=latents",
        "image_size=16",
        "shard_size=4",
        "crops=true",
        "num_workers=0",
        "progress=false",
        cwd=tmp_path,
    )
    assert json.loads((tmp_path / "latents" / "manifest.json").read_text()) == manifest
    # A rerun with other settings would mix them in one folder: refused in one line.
    refused = run_cli(
        "diffusion_transformer.extract_latents", f"data.root={image_folder}", f"vae={tiny_vae}",
        "out=latents", "image_size=32", "shard_size=4", "crops=true", cwd=tmp_path, check=False,
        env_extra=NO_TRACEBACK,
    )  # fmt: skip
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert (
        refused.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "error: image_size=32 differs from the extraction latents holds (image_size=16)"
        )
    )

    # Train on them with the command extract_latents prints (tiny settings added).
    run_printed(
        proc.stdout,
        "diffusion_transformer.train",
        tmp_path,
        *TINY,
        "data.datamodule.num_workers=0",
        "trainer.max_steps=2",
        "logger=none",
        "diffusion.sampling_steps=2",
        "hydra.run.dir=run",
    )
    assert (tmp_path / "run" / "samples" / "final.png").is_file()
    run_cli(
        "diffusion_transformer.sample",
        f"ckpt={tmp_path}/run/checkpoints/last.ckpt",
        "num_samples=2",
        "sampling_steps=2",
        "progress=false",
        "hydra.run.dir=s",
        cwd=tmp_path,
    )
    assert np.load(tmp_path / "s" / "samples.npz")["arr_0"].shape == (2, 16, 16, 3)


@pytest.mark.slow  # one run folder per job of a sweep: tests/integration/test_sweeps.py
def test_multirun_over_model_and_patch(tmp_path):
    proc = run_cli(
        "diffusion_transformer.train",
        "-m",
        "model=tiny,s",
        "patch=2,4",
        "batch_size=2",
        "trainer.max_steps=1",
        "logger=none",
        "callbacks=none",
        "trainer.enable_progress_bar=false",
        "hydra.sweep.dir=sweep",
        cwd=tmp_path,
    )
    runs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert runs == ["0_DiT-tiny-2", "1_DiT-tiny-4", "2_DiT-S-2", "3_DiT-S-4"], proc.stdout
    for run in runs:
        assert (tmp_path / "sweep" / run / "checkpoints" / "last.ckpt").is_file()


def test_gflops_cli(tmp_path):
    out = run_cli("diffusion_transformer.gflops", cwd=tmp_path).stdout
    assert "DiT-XL/2    118.6" in out and "DiT-XL/4     29.1" in out
