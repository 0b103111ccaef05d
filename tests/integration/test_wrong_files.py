"""DiT's and G.pt's loaders handed another kind of file (each other's, a StyleGAN2 generator, a
congealer, a Lightning checkpoint of another model, a random state dict) say in one short line
which kind they found (``common.checkpoint.checkpoint_kind``) and which command and key take it:
exit 2, one ``error:`` line under 200 characters, no traceback, no key dump."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from common.checkpoint import atomic_save

DIT_CMD = "diffusion_transformer.sample ckpt="
GPT_CMD = "gpt_checkpoints.evaluate ckpt="
GAN_CMD = "gangealing.train generator="
CONGEAL_CMD = "gangealing.congeal ckpt="
GAN_RUN = GAN_CMD + "<its run dir>/stylegan2.pt"  # a training checkpoint: through its export


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """One tiny file of each kind, by name."""
    from diffusion_transformer.checkpoints import save_ema
    from diffusion_transformer.models import DiT
    from gangealing.stylegan2.networks import Generator, save_generator

    root = tmp_path_factory.mktemp("kinds")
    torch.manual_seed(0)
    dit = DiT(input_size=4, patch_size=2, hidden_size=32, depth=1, num_heads=2, num_classes=2)
    state = dit.state_dict()
    atomic_save(state, root / "dit.pt")
    save_ema(state, root / "ema.pt", {"model": dit_config(), "diffusion": {}, "vae": {}})
    atomic_save({"state_dict": {f"ema.module.{k}": v for k, v in state.items()},
                 "hyper_parameters": {"model": dit_config(), "diffusion": {}}},
                root / "dit.ckpt")  # fmt: skip
    save_file({"w": torch.zeros(2)}, root / "gpt.safetensors",
              metadata={"format": "gpt/1", "hyper_parameters": "{}"})  # fmt: skip
    save_file({"w": torch.zeros(2)}, root / "gpt_bare.safetensors", metadata={"format": "gpt/1"})
    atomic_save({"state_dict": {"model.w": torch.zeros(2)},
                 "hyper_parameters": {"layout": [], "metric_range": [0.0, 1.0]}},
                root / "gpt.ckpt")  # fmt: skip
    atomic_save({"G": {"w": torch.zeros(2)}, "G_ema": {"w": torch.zeros(2)}}, root / "G.pt")
    tiny = {"size": 16, "style_dim": 16, "n_mlp": 2, "channels": {4: 16, 8: 16, 16: 8}}
    save_generator(root / "stylegan2.pt", Generator(**tiny))
    atomic_save({"state_dict": {}, "hyper_parameters": {"regularization": {}, "mixing": 0.9}},
                root / "gan.ckpt")  # fmt: skip
    atomic_save({"state_dict": {}, "hyper_parameters": {"generator": "g.pt", "num_modes": 1}},
                root / "gangealing.ckpt")  # fmt: skip
    atomic_save({"format": "gangealing-congealer-v1", "config": {}, "stn": {}},
                root / "congealer.pt")  # fmt: skip
    atomic_save({"state_dict": {"net.w": torch.zeros(2)}, "hyper_parameters": {"lr": 0.1}},
                root / "other.ckpt")  # fmt: skip
    atomic_save({"fc.weight": torch.zeros(2, 2), "fc.bias": torch.zeros(2)}, root / "random.pt")
    return root


def dit_config() -> dict:
    return {"input_size": 4, "patch_size": 2, "hidden_size": 32, "depth": 1, "num_heads": 2,
            "num_classes": 2}  # fmt: skip


def _one_line(code: int, err: str) -> str:
    assert code == 2, err
    assert err.count("error:") == 1 and "Traceback" not in err, err
    line = next(line for line in err.splitlines() if "error:" in line)
    assert len(line) < 200 and "keys" not in line, line
    return line


@pytest.mark.parametrize(
    "name, kind, use",
    [
        ("gpt.safetensors", "is a G.pt export, not a DiT checkpoint", GPT_CMD),
        ("gpt.ckpt", "is a G.pt training checkpoint, not a DiT checkpoint", GPT_CMD),
        ("G.pt", "is an official G.pt checkpoint, not a DiT checkpoint", GPT_CMD),
        ("stylegan2.pt", "is a StyleGAN2 checkpoint, not a DiT checkpoint", GAN_CMD),
        ("gan.ckpt", "is a StyleGAN2 training checkpoint, not a DiT", GAN_RUN),
        ("congealer.pt", "is a GANgealing congealer, not a DiT checkpoint", CONGEAL_CMD),
        ("gangealing.ckpt", "is a GANgealing training checkpoint", CONGEAL_CMD + "<its run dir>"),
        ("other.ckpt", "is a Lightning training checkpoint of another model", "DiT .ckpt, ema.pt"),
        ("random.pt", "is a plain state dict of another model, not a DiT", "DiT .ckpt, ema.pt"),
    ],
)
def test_dit_sample_names_the_kind_of_a_wrong_file(files, cli_main, name, kind, use):
    line = _one_line(*cli_main("diffusion_transformer.sample", f"ckpt={files / name}"))
    assert f"{name} {kind}" in line and use in line, line


@pytest.mark.parametrize(
    "name, kind, use",
    [
        ("dit.pt", "is a DiT state dict, not a G.pt checkpoint", DIT_CMD),
        ("ema.pt", "is a DiT state dict, not a G.pt checkpoint", DIT_CMD),
        ("dit.ckpt", "is a DiT training checkpoint, not a G.pt checkpoint", DIT_CMD),
        ("stylegan2.pt", "is a StyleGAN2 checkpoint, not a G.pt checkpoint", GAN_CMD),
        ("gan.ckpt", "is a StyleGAN2 training checkpoint, not a G.pt", GAN_RUN),
        ("congealer.pt", "is a GANgealing congealer, not a G.pt checkpoint", CONGEAL_CMD),
        ("gangealing.ckpt", "is a GANgealing training checkpoint", CONGEAL_CMD + "<its run dir>"),
        ("other.ckpt", "is a Lightning training checkpoint of another model", "gpt.safetensors"),
        ("random.pt", "is a plain state dict of another model, not a G.pt", "gpt.safetensors"),
    ],
)
def test_gpt_prompt_names_the_kind_of_a_wrong_file(files, cli_main, name, kind, use):
    line = _one_line(*cli_main("gpt_checkpoints.prompt", f"ckpt={files / name}"))
    assert f"{name} {kind}" in line and use in line, line


def test_a_gpt_export_that_lost_its_configuration_says_so(files, cli_main):
    line = _one_line(*cli_main("gpt_checkpoints.prompt", f"ckpt={files / 'gpt_bare.safetensors'}"))
    assert "gpt_bare.safetensors is a G.pt export without its configuration" in line, line
    assert "pass its run folder or last.ckpt" in line, line


def test_our_own_files_still_load(files):
    """The DiT files built above are right for DiT's loader (so the refusals are about kind)."""
    from diffusion_transformer.checkpoints import load_dit

    for name in ("dit.pt", "ema.pt", "dit.ckpt"):
        model, _ = load_dit(files / name, num_heads=2)
        assert model.pos_embed.shape[1] == 4
