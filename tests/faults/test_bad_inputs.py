"""Bad inputs to every command give one line, ``error: <what>; <what to do>``, and exit code 2.

Most cases run a command's real ``main()`` in-process with ``sys.argv`` set as a shell would (fast;
the one-line handling lives in ``common.cli``); the last test checks the same through real
processes: exit code 2 and no traceback on stderr.
"""

from __future__ import annotations

import argparse
import importlib

import numpy as np
import pytest
import torch

from tests.faults.conftest import NO_TRACEBACK
from tests.integration.conftest import run_cli


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """One file of every kind a user might hand the wrong command."""
    from diffusion_transformer.models import DiT
    from gangealing.stylegan2.networks import Generator, save_generator

    root = tmp_path_factory.mktemp("bad_inputs")
    f = {}
    f["empty"] = root / "empty.ckpt"
    f["empty"].write_bytes(b"")
    f["text"] = root / "notes.ckpt"
    f["text"].write_text("these are my notes, not weights\n")
    f["random"] = root / "random.pt"
    f["random"].write_bytes(np.random.default_rng(0).bytes(4096))
    f["truncated"] = root / "truncated.ckpt"
    torch.save({"w": torch.zeros(1000)}, f["truncated"])
    f["truncated"].write_bytes(f["truncated"].read_bytes()[:300])
    f["code"] = root / "code.pt"  # a checkpoint whose unpickling would run code
    torch.save({"args": argparse.ArgumentParser, "w": torch.zeros(1)}, f["code"])
    f["dit"] = root / "dit.ckpt"  # the layout of a DiT training checkpoint
    dit = DiT(
        input_size=8,
        patch_size=2,
        in_channels=1,
        hidden_size=32,
        depth=1,
        num_heads=2,
        num_classes=10,
    )
    torch.save(
        {
            "state_dict": {
                f"{prefix}{k}": v
                for prefix in ("model.", "ema.module.")
                for k, v in dit.state_dict().items()
            },
            "hyper_parameters": {"model": {}, "diffusion": {}},
        },
        f["dit"],
    )
    f["gpt"] = root / "gpt.ckpt"  # the layout of a G.pt training checkpoint
    torch.save(
        {
            "state_dict": {"model.x": torch.zeros(1)},
            "hyper_parameters": {"layout": [], "metric_range": [0, 1]},
        },
        f["gpt"],
    )
    f["stylegan2"] = root / "g.pt"
    save_generator(f["stylegan2"], Generator(16, 16, 2, channels={4: 16, 8: 16, 16: 8}))
    f["empty_npz"] = root / "empty.npz"
    np.savez(f["empty_npz"], arr_0=np.zeros((0, 8, 8, 3), np.uint8))
    f["corrupt_npz"] = root / "corrupt.npz"
    f["corrupt_npz"].write_bytes(b"PK\x03\x04 not really a zip")
    f["images"] = root / "images"
    f["images"].mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(f["images"] / "a.png")
    png = (f["images"] / "a.png").read_bytes()
    (f["images"] / "b.png").write_bytes(png[: len(png) // 2])
    f["latents"] = root / "latents"  # extract_latents' layout with a truncated shard
    f["latents"].mkdir()
    (f["latents"] / "manifest.json").write_text('{"shards": [{"file": "s.safetensors", "num": 1}]}')
    (f["latents"] / "s.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    return f


DIT_SAMPLE = "diffusion_transformer.sample"
DIT_TRAIN = "diffusion_transformer.train"
PROMPT = "gpt_checkpoints.prompt"

# (command, arguments with {file} placeholders, a phrase the one line must hold)
CASES = [
    (DIT_SAMPLE, ["ckpt={gpt}"], "is a G.pt training checkpoint"),
    (DIT_SAMPLE, ["ckpt={stylegan2}"], "is a StyleGAN2 checkpoint"),
    (DIT_SAMPLE, ["ckpt={empty}"], "is empty (0 bytes)"),
    (DIT_SAMPLE, ["ckpt={text}"], "not a PyTorch checkpoint (it holds text)"),
    (DIT_SAMPLE, ["ckpt={random}"], "not a PyTorch checkpoint (it holds binary data)"),
    (DIT_SAMPLE, ["ckpt={truncated}"], "damaged or truncated"),
    (DIT_SAMPLE, ["ckpt={code}"], "holds Python objects other than tensors"),
    (DIT_SAMPLE, ["ckpt=missing.pt"], "checkpoint not found"),
    (DIT_SAMPLE, ["ckpt={dit}", "num_samples=0"], "num_samples=0"),
    (DIT_SAMPLE, ["ckpt={dit}", "cfg_scale=nan"], "cfg_scale=nan"),
    (DIT_SAMPLE, ["ckpt={dit}", "cfg_scale=-1"], "cfg_scale=-1"),
    (DIT_SAMPLE, ["ckpt={dit}", "sampling_steps=0"], "sampling_steps=0"),
    (DIT_SAMPLE, ["ckpt={dit}", "arch=DiT-Q/9"], "unknown DiT model 'DiT-Q/9'"),
    (DIT_SAMPLE, ["ckpt={dit}", "device=tpu0"], "device='tpu0' is not a device"),
    (
        "diffusion_transformer.evaluate",
        ["samples={empty_npz}", "reference=digits", "device=tpu0"],
        "device='tpu0' is not a device",
    ),
    (
        "diffusion_transformer.extract_latents",
        ["data.root={images}", "vae=v", "out=o", "device=tpu0"],
        "device='tpu0' is not a device",
    ),
    (
        "diffusion_transformer.extract_latents",
        ["data.root={images}", "vae=v"],
        "Missing mandatory value: out; pass out=<value> on the command line",
    ),
    (
        "diffusion_transformer.extract_latents",
        ["data.root={images}", "vae=no_vae", "out=o"],
        "internet): set vae=<local diffusers folder",
    ),
    (
        "diffusion_transformer.evaluate",
        ["samples={empty_npz}", "reference=digits"],
        "holds arr_0 of shape (0, 8, 8, 3)",
    ),
    (
        "diffusion_transformer.evaluate",
        ["samples={corrupt_npz}", "reference=digits"],
        "not a readable .npz",
    ),
    ("diffusion_transformer.export_diffusers", ["ckpt={gpt}"], "not a DiT checkpoint"),
    (DIT_TRAIN, ["trainer.max_steps=0"], "trainer.max_steps=0"),
    (
        DIT_TRAIN,
        ["data=imagenet_latents", "data.root={latents}", "data.vae.path=v", "logger=none"],
        "s.safetensors (SafetensorError: ",
    ),
    (DIT_TRAIN, ["optim.lr=-1"], "optim.lr=-1"),
    (DIT_TRAIN, ["eval.num_samples=0"], "eval.num_samples=0"),
    (DIT_TRAIN, ["optim.lr=nan"], "optim.lr=nan"),
    (DIT_TRAIN, ["model.depth=abc"], "model.depth='abc'"),
    (DIT_TRAIN, ["trainer.devices=abc", "logger=none"], "Lightning refused the trainer settings"),
    (DIT_TRAIN, ["trainer.precision=banana", "logger=none"], "Precision 'banana' is invalid"),
    ("gangealing.train", ["generator=g.pt", "tv_weight=inf"], "tv_weight=inf"),
    (DIT_TRAIN, ["patchh=2"], "patchh is not a key of this command; check its spelling"),
    (DIT_TRAIN, ["model=huge"], "Could not find 'model/huge'"),
    (DIT_TRAIN, ["resume=nowhere"], "cannot resume"),
    (DIT_TRAIN, ["nan_policy=ignore", "trainer.max_steps=1", "logger=none"], "nan_policy='ignore'"),
    (PROMPT, ["ckpt={dit}"], "is a DiT training checkpoint"),
    (PROMPT, ["ckpt=x", "prompt=nan"], "prompt=nan"),
    (PROMPT, ["ckpt=x", "prompt=inf"], "prompt=inf"),
    (PROMPT, ["ckpt=x", "prompt=-1"], "prompt=-1"),
    (PROMPT, ["ckpt=x", "recursive=0"], "recursive=0"),
    (PROMPT, [], "Missing mandatory value: ckpt; pass ckpt=<value>"),
    (PROMPT, ["ckpt=x", "device=tpu"], "device='tpu' is not a device; pass auto, cpu or cuda[:N]"),
    ("gpt_checkpoints.evaluate", ["ckpt={stylegan2}"], "is a StyleGAN2 checkpoint"),
    ("gpt_checkpoints.evaluate", ["ckpt=x", "device=gpu"], "device='gpu' is not a device"),
    ("gpt_checkpoints.collect", ["device=tpu", "runs=1"], "device='tpu' is not a device"),
    ("gpt_checkpoints.train", ["dataset=missing"], "missing"),
    ("gangealing.train", ["generator={random}"], "not a PyTorch checkpoint"),
    ("gangealing.train", ["generator={code}"], "holds Python objects other than tensors"),
    ("gangealing.train", ["generator={dit}"], "is a DiT training checkpoint"),
    ("gangealing.train", ["generator={stylegan2}", "optim.lr=0"], "optim.lr=0"),
    (
        "gangealing.congeal",
        ["ckpt={stylegan2}", "data.root={images}"],
        "is a StyleGAN2 checkpoint",
    ),
    ("gangealing.congeal", ["ckpt={dit}", "data.root={images}"], "is a DiT training checkpoint"),
    ("gangealing.congeal", ["ckpt={stylegan2}", "data.root={images}", "iters=0"], "iters=0"),
    ("gangealing.congeal", ["ckpt={stylegan2}", "data.root={images}", "device=gpu0"], "device="),
    (
        "gangealing.train_gan",
        [
            "data=folder",
            "data.root={images}",
            "trainer.max_steps=1",
            "logger=none",
            "resolution=16",
        ],
        "cannot read the image",
    ),
    ("gangealing.pck", ["method=none", "benchmark=nope", "data.root=x"], "nope"),
    ("gangealing.cluster_classifier", ["ckpt=missing_run"], "no checkpoint at"),
    ("gangealing.cluster_classifier", ["ckpt=missing_run", "device=tpu"], "device='tpu'"),
    ("diffusion_transformer.report", ["sweep=missing_sweep"], "is not a directory"),
]


@pytest.mark.parametrize(
    ("module", "args", "phrase"), CASES, ids=[f"{c[0]}:{' '.join(c[1])}" for c in CASES]
)
def test_bad_input_gives_one_line_and_exit_code_2(files, cli_main, module, args, phrase):
    code, err = cli_main(module, *(a.format(**files) for a in args))
    lines = err.strip().splitlines()
    assert code == 2, err
    assert lines and lines[-1].startswith("error: "), err
    assert phrase in lines[-1], lines[-1]
    assert "Traceback" not in err and "weights_only=False" not in err


def test_a_real_process_exits_2_with_one_line_and_no_traceback(files, tmp_path):
    proc = run_cli(
        "gangealing.congeal",
        f"ckpt={files['gpt']}",
        f"data.root={files['images']}",
        cwd=tmp_path,
        check=False,
        env_extra=NO_TRACEBACK,
    )
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and err[-1].startswith("error: ") and "G.pt" in err[-1]
    assert "Traceback" not in proc.stderr


def test_a_code_running_checkpoint_names_what_it_needs_and_is_never_unpickled(files):
    from common.checkpoint import safe_load

    with pytest.raises(ValueError, match=r"it needs argparse.ArgumentParser") as err:
        safe_load(files["code"])
    assert "weights_only=False" not in str(err.value)


def _out_of_range(rule: str):
    """A value that breaks a ``common.errors.check_values`` rule."""
    rule = rule.split("|")[0].removeprefix("int")
    if rule.startswith(">="):
        return float(rule[2:]) - 1
    if rule.startswith(">"):
        return float(rule[1:])
    low = float(rule[1:-1].split(",")[0])
    return low if rule[0] == "(" else low - 0.5


# Mandatory arguments of each command, so that only the checked value is wrong.
REQUIRED = {
    "diffusion_transformer.extract_latents": ["data.root=x", "vae=y", "out=z"],
    "gpt_checkpoints.prompt": ["ckpt=x"],
    "gpt_checkpoints.evaluate": ["ckpt=x"],
    "gangealing.train": ["generator=g.pt"],
    "gangealing.congeal": ["ckpt=c", "data.root=i"],
    "gangealing.preprocess": ["ckpt=c", "data.root=i"],
    "gangealing.propagate": ["ckpt=c", "data.root=i", "edit=e"],
    "gangealing.pck": ["benchmark=spair", "data.root=r"],
    "gangealing.cluster_classifier": ["ckpt=r"],
}
CHECKED = [
    (module, key, rule)
    for module in (
        "diffusion_transformer.train", "diffusion_transformer.sample",
        "diffusion_transformer.evaluate", "diffusion_transformer.extract_latents",
        "diffusion_transformer.export_diffusers", "diffusion_transformer.gflops",
        "gpt_checkpoints.train",
        "gpt_checkpoints.collect", "gpt_checkpoints.prompt", "gpt_checkpoints.evaluate",
        "gangealing.train", "gangealing.train_gan", "gangealing.congeal",
        "gangealing.preprocess", "gangealing.propagate", "gangealing.pck",
        "gangealing.cluster_classifier",
    )
    for key, rule in importlib.import_module(module).CHECKS.items()
]  # fmt: skip


@pytest.mark.parametrize(
    ("module", "key", "rule"), CHECKED, ids=[f"{m}:{k}" for m, k, _ in CHECKED]
)
def test_every_checked_value_is_refused_out_of_range(cli_main, module, key, rule):
    """NaN and inf take the same path (``check_values`` refuses any non-finite number): the
    table above checks them for the values a user mistypes most."""
    code, err = cli_main(module, *REQUIRED.get(module, []), f"{key}={_out_of_range(rule)}")
    line = err.strip().splitlines()[-1]
    assert code == 2 and line.startswith(f"error: {key}=") and "makes no sense" in line, err
