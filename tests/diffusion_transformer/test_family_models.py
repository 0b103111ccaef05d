"""DiT's successors in our DiT: SiT, REPA and LightningDiT files load strictly and give the official
outputs; their options round-trip through ``infer_config``; Gflops stay exact for every option.

Fixtures (``fixtures/{sit,repa,lightningdit}/``) were made by running the official code on the CPU
with every parameter randomised: ``/work/official/sit/make_fixtures.py`` (willisma/SiT @ 947f95b),
``/work/official/repa/make_fixtures.py`` (sihyun-yu/REPA @ 67f7145, timm ``Attention`` given
``norm_layer=nn.LayerNorm`` for qk-norm, as timm of its time) and
``/work/official/lightningdit/make_fixtures.py`` (hustvl/LightningDiT @ 2725fed); each file holds
the official model's state dict in its released or training format, ``forward.safetensors`` its
inputs and outputs.
"""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from common.checkpoint import atomic_save
from common.nn.flops import count_macs
from diffusion_transformer.checkpoints import infer_config, load_dit
from diffusion_transformer.layers import RMSNorm, RotaryEmbedding2D, SwiGLU
from diffusion_transformer.models import ARCHS, DiT, from_arch

FIXTURES = Path(__file__).parent / "fixtures"
OFFICIAL = {"atol": 1e-5, "rtol": 0}  # REPA's official attention is unfused: ~1e-6 apart
ALL_ON = dict(qk_norm=True, use_rmsnorm=True, use_swiglu=True, use_rope=True, wo_shift=True)


def forward(system: str) -> dict[str, torch.Tensor]:
    return load_file(FIXTURES / system / "forward.safetensors")


# ----------------------------------------------------------------------------- official outputs
@torch.no_grad()
def test_sit_files_load_with_sits_first_half_convention():
    f = forward("sit")
    sit, _ = load_dit(FIXTURES / "sit/sit.pt", arch="SiT", num_heads=4, cfg_channels=3)
    torch.testing.assert_close(sit(f["x"], f["t"], f["y"]), f["forward"], **OFFICIAL)
    cfg = sit.forward_with_cfg(f["x"], f["t"], f["cfg_y"], 4.0)
    torch.testing.assert_close(cfg, f["forward_with_cfg"], **OFFICIAL)
    as_dit, _ = load_dit(FIXTURES / "sit/sit.pt", num_heads=4)  # same keys: DiT's whole head
    torch.testing.assert_close(
        as_dit(f["x"], f["t"], f["y"]), f["forward_all_channels"], **OFFICIAL
    )
    for use_ema, key in ((True, "train_ema_forward"), (False, "train_model_forward")):
        trained, _ = load_dit(FIXTURES / "sit/sit_train.pt", "SiT", use_ema=use_ema, num_heads=2)
        torch.testing.assert_close(trained(f["x"], f["t"], f["y"]), f[key], **OFFICIAL)


@pytest.mark.parametrize(
    ("file", "tag", "use_ema"),
    [("repa.pt", "ema", True), ("repa.pt", "model", False), ("repa_qknorm.pt", "qknorm", True)],
)
@torch.no_grad()
def test_repa_files_give_the_official_output_and_projections(file, tag, use_ema):
    f = forward("repa")
    # repa.pt's args name SiT-XL/2 (the README's command) for a tiny model: pin the family only;
    # its encoder_depth comes from the args, the plain repa_qknorm.pt needs it given.
    model, _ = load_dit(
        FIXTURES / "repa" / file, arch="SiT", num_heads=4, use_ema=use_ema, encoder_depth=1
    )
    assert model.projector_dims == [32, 16] and model.projector_hidden == 64
    assert model.options["qk_norm"] == (tag == "qknorm") and not model.learn_sigma
    out, zs = model(f["x"], f["t"], f["y"], return_projections=True)
    torch.testing.assert_close(out, f[f"{tag}.out"], **OFFICIAL)
    assert len(zs) == 2
    for i, z in enumerate(zs):
        torch.testing.assert_close(z, f[f"{tag}.zs.{i}"], **OFFICIAL)
    torch.testing.assert_close(model(f["x"], f["t"], f["y"]), out, atol=0, rtol=0)


def test_repa_training_file_records_its_encoder_depth():
    model, meta = load_dit(FIXTURES / "repa/repa.pt", arch="SiT", num_heads=4)
    assert model.encoder_depth == 1 and meta["official_args"]["encoder_depth"] == 1
    with pytest.raises(ValueError, match="encoder_depth=8 is not a block"):
        load_dit(FIXTURES / "repa/repa_qknorm.pt")  # no args: REPA's default 8 > 2 blocks


@pytest.mark.parametrize(
    ("file", "tag"), [("lightningdit.pt", "lightningdit"), ("lightningdit_plain.pt", "plain")]
)
@torch.no_grad()
def test_lightningdit_files_give_the_official_outputs(file, tag):
    f = forward("lightningdit")
    model, _ = load_dit(FIXTURES / "lightningdit" / file, num_heads=4, cfg_channels=3)
    assert model.options == {k: tag == "lightningdit" for k in ALL_ON}
    out = model(f[f"{tag}.x"], f[f"{tag}.t"], f[f"{tag}.y"])
    torch.testing.assert_close(out, f[f"{tag}.out"], **OFFICIAL)
    scale = float(f["cfg_scale"])
    guided = model.forward_with_cfg(f[f"{tag}.cfg_x"], f[f"{tag}.cfg_t"], f[f"{tag}.cfg_y"], scale)
    torch.testing.assert_close(guided, f[f"{tag}.cfg"], **OFFICIAL)


def test_lightningdit_heads_and_rope_tables_come_from_the_file():
    state = torch.load(FIXTURES / "lightningdit/lightningdit.pt", weights_only=True)["ema"]
    config = infer_config(state)
    assert config["num_heads"] == 4 and config["wo_shift"] and config["patch_size"] == 1
    fresh = DiT(**config)  # our RoPE tables equal the official persistent buffers
    assert torch.equal(fresh.feat_rope.freqs_cos, state["feat_rope.freqs_cos"])
    assert torch.equal(fresh.feat_rope.freqs_sin, state["feat_rope.freqs_sin"])


def test_ema_only_file_refuses_the_raw_weights(tmp_path):
    with pytest.raises(ValueError, match="only EMA weights.*drop use_ema=false"):
        load_dit(FIXTURES / "lightningdit/lightningdit.pt", use_ema=False)
    with pytest.raises(KeyError, match="unknown DiT model 'SiT-XXL/2'.*or a family name"):
        load_dit(FIXTURES / "sit/sit.pt", arch="SiT-XXL/2")


def test_lightningdit_training_file_names_its_model_in_its_config(tmp_path):
    state = torch.load(FIXTURES / "lightningdit/lightningdit.pt", weights_only=True)["ema"]
    config = {"model": {"model_type": "LightningDiT-XL/1", "use_swiglu": True}}
    atomic_save({"model": state, "ema": state, "opt": {}, "config": config}, tmp_path / "a.pt")
    with pytest.raises(ValueError, match="looks like depth=2"):  # XL/1 pinned by the config
        load_dit(tmp_path / "a.pt")
    model, meta = load_dit(tmp_path / "a.pt", arch="LightningDiT", use_ema=False)
    assert meta["official_args"] == {"model": "LightningDiT-XL/1"} and model.options["wo_shift"]


# ----------------------------------------------------------------------------- architectures
TINY = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=4,
            num_classes=10)  # fmt: skip
OPTIONS = [
    {"qk_norm": True},
    {"qk_norm": True, "use_rmsnorm": True},
    {"use_rmsnorm": True},
    {"use_swiglu": True},
    {"use_rope": True},
    {"use_rope": True, "wo_shift": True},
    {"patch_size": 1, "learn_sigma": False},
    {"projector_dims": [16, 8], "projector_hidden": 24, "encoder_depth": 1},
    {**ALL_ON, "patch_size": 1},
]


@pytest.mark.parametrize("options", OPTIONS)
def test_infer_config_round_trips_every_option(options):
    model = DiT(**{**TINY, **options})
    config = infer_config(model.state_dict())
    assert {k: config[k] for k in options if k != "encoder_depth"} == {
        k: v for k, v in options.items() if k != "encoder_depth"
    }
    rebuilt = DiT(**{**config, "num_heads": 4, "encoder_depth": 1})
    rebuilt.load_state_dict(model.state_dict(), strict=True)


def test_wo_shift_alone_reads_as_dits_adaln_block_unless_lightningdit():
    state = DiT(**TINY, wo_shift=True).state_dict()  # same keys and shapes as block="adaln"
    assert infer_config(state)["block"] == "adaln" and "wo_shift" not in infer_config(state)
    config = infer_config(state, family="LightningDiT")
    assert config["block"] == "adaln_zero" and config["wo_shift"]


def test_registry_names_and_released_sizes():
    assert {"SiT-XL/2", "SiT-S/8", "LightningDiT-XL/1", "LightningDiT-B/2", "DiT-XL/2"} <= set(
        ARCHS
    )
    with torch.device("meta"):
        lightning = from_arch("LightningDiT-XL/1")
        repa = from_arch("SiT-XL/2", learn_sigma=False, projector_dims=[768])
    # facts sheets: the released LightningDiT-XL/1 (VA-VAE 16x16x32) and REPA's SiT-XL/2.
    assert sum(p.numel() for p in lightning.parameters()) == 675_256_736
    assert len(lightning.state_dict()) == 351 and lightning.out_channels == 32
    assert sum(p.numel() for p in repa.parameters()) == 683_242_512
    with torch.device("meta"):  # the same network, with SiT's output convention
        assert from_arch("SiT-XL/2").flops() == from_arch("DiT-XL/2").flops()


def test_options_are_refused_where_they_do_not_apply():
    with pytest.raises(ValueError, match="block=in_context has none of"):
        DiT(**TINY, block="in_context", use_rope=True)
    with pytest.raises(ValueError, match="needs REPA projectors"):
        DiT(**TINY)(torch.randn(1, 4, 8, 8), torch.ones(1), torch.ones(1, dtype=torch.long), True)


# ----------------------------------------------------------------------------- Gflops
def _elementwise_of_options(model: DiT, *inputs) -> int:
    """The options' elementwise flops read off a real forward: one per channel entering each norm
    with a weight (RMSNorm, qk-norm), two per q/k channel entering RoPE, one per SwiGLU gate
    product (DiT's affine-free LayerNorms have none)."""
    counted = []

    def hook(factor):
        return lambda module, args, out: counted.append(factor * args[0].numel())

    handles = []
    for module in model.modules():
        if isinstance(module, (RMSNorm, torch.nn.LayerNorm)) and module.weight is not None:
            handles.append(module.register_forward_hook(hook(1)))
        elif isinstance(module, RotaryEmbedding2D):
            handles.append(module.register_forward_hook(hook(2)))
        elif isinstance(module, SwiGLU):
            handles.append(module.w3.register_forward_hook(hook(1)))
    with torch.no_grad():
        model(*inputs)
    for handle in handles:
        handle.remove()
    return sum(counted)


@pytest.mark.parametrize("options", OPTIONS)
def test_gflops_are_exact_for_every_option(options):
    model = DiT(**{**TINY, **options}).eval()
    inputs = (torch.randn(1, 4, 8, 8), torch.tensor([0.3]), torch.tensor([2]))
    flops = model.flops()
    assert flops["matmul"] == count_macs(model, *inputs)
    plain = DiT(**{**TINY, "patch_size": model.patch_size}).flops()["elementwise"]
    assert flops["elementwise"] - plain == _elementwise_of_options(model, *inputs)
    assert flops["total"] == flops["matmul"] + flops["elementwise"]
    if model.projector_dims:  # training-only: apart from the sampling total
        assert flops["projectors"] > 0
        assert flops["matmul"] + flops["projectors"] == count_macs(model, *inputs, True)
    else:
        assert flops["projectors"] == 0


def test_our_files_keep_the_options(tmp_path):
    model = DiT(**TINY, **ALL_ON, projector_dims=[8], encoder_depth=2).eval()
    atomic_save(model.state_dict(), tmp_path / "plain.pt")
    loaded, _ = load_dit(tmp_path / "plain.pt", encoder_depth=2)
    assert loaded.config == model.config
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([0.1, 0.9]), torch.tensor([1, 10])
    with torch.no_grad():
        assert torch.equal(loaded(x, t, y), model(x, t, y))
