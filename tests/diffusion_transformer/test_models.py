"""DiT architecture: Table 2.1 configs, official state-dict format, adaLN-Zero init, Gflops."""

import pytest
import torch

from common.checkpoint import atomic_save, safe_load
from common.nn.flops import count_macs
from diffusion_transformer.models import BLOCK_TYPES, DiT, DiT_models, dit_flops, gflops_table


def small_dit(**kwargs):
    args = dict(
        input_size=8,
        patch_size=2,
        in_channels=4,
        hidden_size=32,
        depth=2,
        num_heads=4,
        num_classes=10,
    )
    args.update(kwargs)
    return DiT(**args)


def randomize(model):
    """Leave the zero-inits behind so that every parameter influences the output."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.normal_(0, 0.05)
    return model


def test_registry_has_the_twelve_table_configs():
    expected = {f"DiT-{s}/{p}" for s in ("S", "B", "L", "XL") for p in (2, 4, 8)}
    assert set(DiT_models) == expected


def test_xl2_state_dict_matches_the_released_checkpoint():
    with torch.device("meta"):
        model = DiT_models["DiT-XL/2"](input_size=32, num_classes=1000)
    sd = model.state_dict()
    assert sum(p.numel() for p in model.parameters()) == 675_129_632
    d = 1152
    expected = {
        "pos_embed": (1, 256, d),
        "x_embedder.proj.weight": (d, 4, 2, 2),
        "x_embedder.proj.bias": (d,),
        "t_embedder.mlp.0.weight": (d, 256),
        "t_embedder.mlp.0.bias": (d,),
        "t_embedder.mlp.2.weight": (d, d),
        "t_embedder.mlp.2.bias": (d,),
        "y_embedder.embedding_table.weight": (1001, d),
        "final_layer.linear.weight": (2 * 2 * 8, d),
        "final_layer.linear.bias": (32,),
        "final_layer.adaLN_modulation.1.weight": (2 * d, d),
        "final_layer.adaLN_modulation.1.bias": (2 * d,),
    }
    per_block = {
        "attn.qkv.weight": (3 * d, d),
        "attn.qkv.bias": (3 * d,),
        "attn.proj.weight": (d, d),
        "attn.proj.bias": (d,),
        "mlp.fc1.weight": (4 * d, d),
        "mlp.fc1.bias": (4 * d,),
        "mlp.fc2.weight": (d, 4 * d),
        "mlp.fc2.bias": (d,),
        "adaLN_modulation.1.weight": (6 * d, d),
        "adaLN_modulation.1.bias": (6 * d,),
    }
    for i in range(28):
        expected.update({f"blocks.{i}.{k}": v for k, v in per_block.items()})
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected  # no LayerNorm affine params


def test_adaln_zero_blocks_start_as_identity_and_output_is_zero():
    model = small_dit()
    x, t, y = torch.randn(3, 4, 8, 8), torch.tensor([0, 10, 999]), torch.tensor([0, 3, 9])
    tokens = model.x_embedder(x) + model.pos_embed
    c = model.t_embedder(t) + model.y_embedder(y, False)
    for block in model.blocks:
        assert torch.equal(block(tokens, c), tokens)
    assert torch.equal(model(x, t, y), torch.zeros(3, 8, 8, 8))
    # Vanilla adaLN (no gates) is not the identity at initialisation.
    plain = small_dit(block="adaln")
    assert not torch.equal(plain.blocks[0](tokens, c), tokens)


@pytest.mark.parametrize("block", BLOCK_TYPES)
def test_every_block_design_runs_and_keeps_shapes(block):
    model = randomize(small_dit(block=block, learn_sigma=False))
    out = model(torch.randn(2, 4, 8, 8), torch.tensor([1, 2]), torch.tensor([3, 4]))
    assert out.shape == (2, 4, 8, 8)
    assert model.flops()["matmul"] == count_macs(
        model, torch.randn(1, 4, 8, 8), torch.tensor([1]), torch.tensor([2])
    )


def test_unpatchify_inverts_patchify_layout():
    model = small_dit(learn_sigma=False)
    x = torch.randn(2, 4, 8, 8)
    p = 2
    tokens = x.reshape(2, 4, 4, p, 4, p).permute(0, 2, 4, 3, 5, 1).reshape(2, 16, p * p * 4)
    assert torch.equal(model.unpatchify(tokens), x)


def test_gflops_reproduce_table_2_1_and_section_2_5():
    table = dict(gflops_table(256))
    for name, value in {
        "DiT-S/4": 1.4,
        "DiT-B/4": 5.6,
        "DiT-L/4": 19.7,
        "DiT-XL/4": 29.1,
        "DiT-XL/2": 118.6,
        "DiT-L/2": 80.7,
        "DiT-S/8": 0.4,
    }.items():
        assert round(table[name], 1) == value, name
    assert round(dict(gflops_table(512))["DiT-XL/2"], 1) == 524.6
    assert round(dit_flops(block="in_context")["total"] / 1e9, 1) == 119.4
    assert round(dit_flops(block="cross_attention")["total"] / 1e9, 1) == 137.6
    # Sec. 2.5.2: L/2 with 1000 steps costs 80.7 Tflops per image, XL/2 with 128 steps 15.2.
    assert round(table["DiT-XL/2"] * 128 / 1000, 1) == 15.2


def test_gflops_cli_prints_one_line_per_config(run_main):
    code, out, _ = run_main("diffusion_transformer.gflops")
    lines = out.strip().splitlines()
    assert code == 0
    assert len(lines) == 12
    assert any(line.split() == ["DiT-XL/2", "118.6"] for line in lines)


def test_forward_with_cfg_official_convention():
    model = randomize(small_dit()).eval()  # no label dropout
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([5, 5, 5, 5])
    y = torch.tensor([1, 2, 10, 10])
    out = model.forward_with_cfg(torch.cat([x, x]), t, y, cfg_scale=3.0)
    full = model(torch.cat([x, x]), t, y)
    cond, uncond = full[:2], full[2:]
    torch.testing.assert_close(out[:2, :4], uncond[:, :4] + 3.0 * (cond[:, :4] - uncond[:, :4]))
    torch.testing.assert_close(out[2:, :4], out[:2, :4])
    torch.testing.assert_close(out[:, 4:], full[:, 4:])
    model.cfg_channels = 3  # the official setting: channel 3 of the latent is not guided
    official = model.forward_with_cfg(torch.cat([x, x]), t, y, cfg_scale=3.0)
    torch.testing.assert_close(official[:, 3:], full[:, 3:])


def test_save_reload_gives_identical_outputs(tmp_path):
    model = randomize(small_dit()).eval()
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([3, 700]), torch.tensor([1, 2])
    atomic_save(model.state_dict(), tmp_path / "dit.pt")
    clone = small_dit()
    clone.load_state_dict(safe_load(tmp_path / "dit.pt"), strict=True)
    assert torch.equal(clone.eval()(x, t, y), model(x, t, y))


def test_bad_configurations_are_named():
    with pytest.raises(ValueError, match="patch size 3 does not divide the input size 8"):
        small_dit(patch_size=3)
    with pytest.raises(ValueError, match="unknown block"):
        small_dit(block="film")
    with pytest.raises(ValueError, match="got \\(1, 4, 16, 16\\)"):
        small_dit()(torch.randn(1, 4, 16, 16), torch.tensor([1]), torch.tensor([1]))
