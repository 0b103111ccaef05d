"""Keys that a combination ignores are refused, not ignored (issue 28): one ``error:`` line
naming the key, exit code 2, no traceback; the nearby combination that uses the key still runs."""

from __future__ import annotations

import pytest
import torch

FILE_CASES = [  # (command, file, args, refused key); the file kinds are built below
    ("sample", "ema", ["cfg_channels=1"], "cfg_channels"),
    ("sample", "ema", ["use_ema=false"], "use_ema"),
    ("sample", "ema", ["labels=[1,2,3]", "num_samples=2"], "labels"),
    ("sample", "official", ["num_heads=2", "use_ema=false"], "use_ema"),
    ("sample", "diffusers", ["use_ema=false"], "use_ema"),
    ("sample", "ema", ["vae=sd-vae-ft-ema"], "vae"),
    ("sample", "ckpt", ["num_heads=4"], "num_heads"),
    ("sample", "diffusers", ["arch=DiT-S/2"], "arch"),
    ("sample", "diffusers", ["image_size=16"], "image_size"),
    ("sample", "diffusers", ["num_classes=5"], "num_classes"),
    ("sample", "diffusers", ["num_heads=4"], "num_heads"),
    ("export_diffusers", "ema", ["use_ema=false"], "use_ema"),
    ("export_diffusers", "ema", ["vae=sd-vae-ft-ema"], "vae"),
    ("export_diffusers", "diffusers", ["num_heads=4"], "num_heads"),
]
PLAIN_CASES = [  # (command, args, refused key): refused before any input is read
    ("evaluate", ["metrics.names=[fd_digits]", "metrics.inception_weights=w"], "inception_weights"),
    ("evaluate", ["metrics.names=[is_digits]", "reference=digits"], "reference"),
    ("evaluate", ["metrics.names=[fid]", "reference=digits", "metrics.cache_dir=c"], "cache_dir"),
    ("report", ["logger=none", "project=dit"], "project"),
    ("report", ["logger=csv", "group=sweep"], "group"),
    ("report", ["run_id=abc"], "run_id"),
    ("report", ["run_name=mine"], "run_name"),
    ("report", ["run_dir=elsewhere"], "run_dir"),
    ("report", ["logger.wandb.project=dit"], "logger.wandb.project"),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny pixel-space DiT as each kind of file: our ema.pt and Lightning .ckpt (both record
    the architecture), an official plain state dict (records none), a diffusers folder."""
    from diffusion_transformer.checkpoints import save_ema
    from diffusion_transformer.diffusers_io import export_diffusers
    from diffusion_transformer.models import DiT

    root = tmp_path_factory.mktemp("ignored_keys")
    dit = DiT(8, 2, 1, hidden_size=32, depth=1, num_heads=2, num_classes=10)
    sd = dit.state_dict()
    record = {"model": dit.config, "diffusion": {"objective": "ddpm"}, "vae": None}
    f = {k: root / name for k, name in (("ema", "ema.pt"), ("ckpt", "last.ckpt"))}
    save_ema(sd, f["ema"], record)
    both = {f"{p}{k}": v for p in ("model.", "ema.module.") for k, v in sd.items()}
    torch.save({"state_dict": both, "hyper_parameters": record}, f["ckpt"])
    f["official"] = root / "official.pt"
    torch.save(sd, f["official"])
    f["diffusers"] = export_diffusers(dit, root / "diffusers")
    return f


def _refused(code: int, err: str, key: str) -> None:
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert f"{key}=" in errors[0] and "drop it" in errors[0], errors[0]


CASES = FILE_CASES + [(c, None, a, k) for c, a, k in PLAIN_CASES]


@pytest.mark.parametrize(
    ("command", "file", "args", "key"), CASES, ids=[f"{c[0]}:{c[1]}:{c[3]}" for c in CASES]
)
def test_an_ignored_key_is_refused(files, cli_main, command, file, args, key):
    inputs = {
        "evaluate": ["samples=samples.npz"],
        "report": ["sweep=."],
    }.get(command) or [f"ckpt={files[file]}"]
    code, err = cli_main(f"diffusion_transformer.{command}", *inputs, *args)
    _refused(code, err, key)


def test_the_keys_run_where_they_apply(files, run_main):
    """The nearby accepted combination: an architecture key that agrees with the record, and
    ``use_ema=false`` for a file that holds both sets of weights."""
    tiny = ["num_samples=1", "sampling_steps=2", "device=cpu", "progress=false"]
    for ckpt, args in ((files["ema"], ["num_heads=2"]), (files["ckpt"], ["use_ema=false"])):
        code, out, err = run_main("diffusion_transformer.sample", f"ckpt={ckpt}", *args, *tiny)
        assert code == 0 and "samples npz" in out, err
