"""Plain-PyTorch StyleGAN2 [187] (thesis Sec. 4.3): rosinality checkpoint format, FIR resampling,
modulated convolution, W+ input [188] and style mixing, checkpoint I/O and its error messages."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gangealing.stylegan2.networks import (
    Discriminator,
    Generator,
    default_channels,
    infer_generator_config,
    load_generator,
    save_generator,
)
from gangealing.stylegan2.ops import Downsample, ModulatedConv2d, Upsample, make_kernel, upfirdn2d

CH = {4: 16, 8: 16, 16: 8}
STYLE_DIM = 32


def _generator(**kw) -> Generator:
    return Generator(16, style_dim=STYLE_DIM, n_mlp=2, channels=CH, **kw).eval()


def _mod_style(n: int, c: int):
    return [(f"{n}.conv.modulation.weight", (c, STYLE_DIM)), (f"{n}.conv.modulation.bias", (c,))]


def _styled(n: int, cin: int, cout: int, up: bool):
    blur = [(f"{n}.conv.blur.kernel", (4, 4))] if up else []
    return (
        [(f"{n}.conv.weight", (1, cout, cin, 3, 3))]
        + blur
        + _mod_style(n, cin)
        + [(f"{n}.noise.weight", (1,)), (f"{n}.activate.bias", (cout,))]
    )


def _to_rgb(n: int, cin: int, up: bool):
    ups = [(f"{n}.upsample.kernel", (4, 4))] if up else []
    return (
        [(f"{n}.bias", (1, 3, 1, 1))]
        + ups
        + [(f"{n}.conv.weight", (1, 3, cin, 1, 1))]
        + (_mod_style(n, cin))
    )


# rosinality stylegan2-pytorch model.py, Generator(16, 32, n_mlp=2) with widths 4:16, 8:16, 16:8
EXPECTED_G = (
    [("style.1.weight", (32, 32)), ("style.1.bias", (32,))]
    + [("style.2.weight", (32, 32)), ("style.2.bias", (32,)), ("input.input", (1, 16, 4, 4))]
    + _styled("conv1", 16, 16, up=False)
    + _to_rgb("to_rgb1", 16, up=False)
    + _styled("convs.0", 16, 16, up=True)
    + _styled("convs.1", 16, 16, up=False)
    + _styled("convs.2", 16, 8, up=True)
    + _styled("convs.3", 8, 8, up=False)
    + _to_rgb("to_rgbs.0", 16, up=True)
    + _to_rgb("to_rgbs.1", 8, up=True)
    + [("noises.noise_0", (1, 1, 4, 4)), ("noises.noise_1", (1, 1, 8, 8))]
    + [("noises.noise_2", (1, 1, 8, 8)), ("noises.noise_3", (1, 1, 16, 16))]
    + [("noises.noise_4", (1, 1, 16, 16))]
)

# rosinality Discriminator(16) with the same widths: ConvLayer = Sequential([Blur], conv, [act])
EXPECTED_D = [
    ("convs.0.0.weight", (8, 3, 1, 1)), ("convs.0.1.bias", (8,)),
    ("convs.1.conv1.0.weight", (8, 8, 3, 3)), ("convs.1.conv1.1.bias", (8,)),
    ("convs.1.conv2.0.kernel", (4, 4)), ("convs.1.conv2.1.weight", (16, 8, 3, 3)),
    ("convs.1.conv2.2.bias", (16,)), ("convs.1.skip.0.kernel", (4, 4)),
    ("convs.1.skip.1.weight", (16, 8, 1, 1)),
    ("convs.2.conv1.0.weight", (16, 16, 3, 3)), ("convs.2.conv1.1.bias", (16,)),
    ("convs.2.conv2.0.kernel", (4, 4)), ("convs.2.conv2.1.weight", (16, 16, 3, 3)),
    ("convs.2.conv2.2.bias", (16,)), ("convs.2.skip.0.kernel", (4, 4)),
    ("convs.2.skip.1.weight", (16, 16, 1, 1)),
    ("final_conv.0.weight", (16, 17, 3, 3)), ("final_conv.1.bias", (16,)),
    ("final_linear.0.weight", (16, 256)), ("final_linear.0.bias", (16,)),
    ("final_linear.1.weight", (1, 16)), ("final_linear.1.bias", (1,)),
]  # fmt: skip


# ---------------------------------------------------------------- checkpoint format oracle


def test_generator_state_dict_equals_rosinality_keys_and_shapes():
    g = _generator()
    got = {k: tuple(v.shape) for k, v in g.state_dict().items()}
    assert got == dict(EXPECTED_G)
    assert g.n_latent == 6 and g.num_layers == 5
    blur = g.state_dict()["convs.0.conv.blur.kernel"]
    k = torch.tensor([1.0, 3, 3, 1])
    torch.testing.assert_close(blur, torch.outer(k, k) / 64 * 4)  # normalised, times up^2
    torch.testing.assert_close(g.state_dict()["to_rgbs.0.upsample.kernel"], blur)


def test_discriminator_state_dict_equals_rosinality_keys_and_shapes():
    d = Discriminator(16, channels=CH)
    assert {k: tuple(v.shape) for k, v in d.state_dict().items()} == dict(EXPECTED_D)
    torch.testing.assert_close(d.state_dict()["convs.1.skip.0.kernel"].sum(), torch.tensor(1.0))


def test_default_channel_table_and_config_inference_from_full_size_shapes():
    assert default_channels(2) == {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256,
                                   256: 128, 512: 64, 1024: 32}  # fmt: skip
    for size, cm in ((256, 2), (64, 1)):
        with torch.device("meta"):  # shapes only, no memory
            g = Generator(size, 512, 8, channel_multiplier=cm)
        cfg = infer_generator_config(g.state_dict())
        assert (cfg["size"], cfg["style_dim"], cfg["n_mlp"]) == (size, 512, 8)
        assert cfg["channel_multiplier"] == cm and g.n_latent == 2 * int(math.log2(size)) - 2
    assert infer_generator_config(_generator().state_dict())["channel_multiplier"] is None


# ---------------------------------------------------------------- FIR resampling


def _upfirdn_loops(x, k, up, down, x0, x1, y0, y1):
    """Definition, by explicit loops: y[i, j] = sum_ab u[i * down + a, j * down + b] k[-a, -b]
    where u is the zero-upsampled, padded input."""
    n, c, h, w = x.shape
    u = torch.zeros(n, c, h * up, w * up)
    u[:, :, ::up, ::up] = x
    big = torch.zeros(n, c, h * up + abs(y0) + abs(y1), w * up + abs(x0) + abs(x1))
    big[:, :, abs(y0) : abs(y0) + h * up, abs(x0) : abs(x0) + w * up] = u
    u = big[:, :, abs(y0) - y0 : big.shape[2] - (abs(y1) - y1), abs(x0) - x0 :]
    u = u[:, :, :, : u.shape[3] - (abs(x1) - x1)]
    kh, kw = k.shape
    oh, ow = (u.shape[2] - kh) // down + 1, (u.shape[3] - kw) // down + 1
    out = torch.zeros(n, c, oh, ow)
    for i in range(oh):
        for j in range(ow):
            for a in range(kh):
                for b in range(kw):
                    out[:, :, i, j] += (
                        u[:, :, i * down + a, j * down + b] * k[kh - 1 - a, kw - 1 - b]
                    )
    return out


@pytest.mark.parametrize("up,down,pad", [(1, 2, (2, 1, 1, 0)), (1, 2, (1, 1, 1, 1)),
                                         (2, 1, (2, 1, 0, 3)), (2, 2, (-1, 2, 1, -1))])  # fmt: skip
def test_upfirdn2d_matches_the_definition_with_an_asymmetric_kernel(up, down, pad):
    x = torch.randn(2, 3, 7, 6)
    k = torch.rand(4, 3) + 0.1  # asymmetric and non-square: catches a missing flip or axis swap
    torch.testing.assert_close(upfirdn2d(x, k, up, down, pad), _upfirdn_loops(x, k, up, down, *pad))


def test_upsample_equals_a_transposed_convolution_and_keeps_constants():
    x = torch.randn(1, 2, 5, 5)
    kernel = make_kernel([1, 3, 3, 1]) * 4
    # a stride-2 transposed conv with kernel k is zero insertion followed by a full convolution
    full = F.conv_transpose2d(x.reshape(2, 1, 5, 5), kernel[None, None], stride=2)
    up = Upsample([1, 3, 3, 1])
    p0, p1 = up.pad  # y[o] = full[o + kh - 1 - p0]
    ref = F.pad(full, (p0 - 3, p1 - 2, p0 - 3, p1 - 2)).reshape(1, 2, 10, 10)
    torch.testing.assert_close(up(x), ref)
    const = up(torch.full((1, 1, 8, 8), 0.7))
    assert const.shape == (1, 1, 16, 16)
    torch.testing.assert_close(const[..., 2:-2, 2:-2], torch.full((1, 1, 12, 12), 0.7))


def test_fir_kernel_normalisation_preserves_the_mean():
    x = torch.randn(1, 1, 8, 8)
    k = make_kernel([1, 3, 3, 1])
    assert math.isclose(k.sum().item(), 1.0, rel_tol=1e-6)
    full = upfirdn2d(x, k, pad=(3, 3))  # full convolution keeps all the mass
    torch.testing.assert_close(full.sum(), x.sum(), rtol=1e-5, atol=1e-5)
    full_up = upfirdn2d(x, k * 4, up=2, pad=(3, 3))  # 4x the pixels, same mean
    torch.testing.assert_close(full_up.sum() / 4, x.sum(), rtol=1e-5, atol=1e-5)
    down = Downsample([1, 3, 3, 1])(torch.full((1, 1, 16, 16), -1.5))
    torch.testing.assert_close(down[..., 1:-1, 1:-1], torch.full((1, 1, 6, 6), -1.5))


# ---------------------------------------------------------------- modulated convolution


@pytest.mark.parametrize("up,down", [(False, False), (True, False), (False, True)])
def test_modulated_conv_equals_an_explicit_per_sample_convolution(up, down):
    conv = ModulatedConv2d(4, 5, 3, STYLE_DIM, upsample=up, downsample=down)
    x, w = torch.randn(3, 4, 8, 8), torch.randn(3, STYLE_DIM)
    out = conv(x, w)
    s = conv.modulation(w)
    for n in range(3):
        weight = conv.weight[0] * conv.scale * s[n][None, :, None, None]
        weight = weight / weight.pow(2).sum(dim=(1, 2, 3), keepdim=True).add(1e-8).sqrt()
        if up:
            ref = conv.blur(F.conv_transpose2d(x[n : n + 1], weight.transpose(0, 1), stride=2))
        elif down:
            ref = F.conv2d(conv.blur(x[n : n + 1]), weight, stride=2)
        else:
            ref = F.conv2d(x[n : n + 1], weight, padding=1)
        torch.testing.assert_close(out[n : n + 1], ref, rtol=1e-4, atol=1e-5)
    assert out.shape[-1] == {(False, False): 8, (True, False): 16, (False, True): 4}[(up, down)]


def test_demodulation_gives_unit_variance_outputs():
    conv = ModulatedConv2d(64, 8, 3, STYLE_DIM)
    with torch.no_grad():
        conv.modulation.weight.mul_(5)  # strongly non-uniform styles
        out = conv(torch.randn(2, 64, 32, 32), torch.randn(2, STYLE_DIM))
    std = out[..., 1:-1, 1:-1].std(dim=(2, 3))
    assert ((std > 0.85) & (std < 1.15)).all(), std


# ---------------------------------------------------------------- generator behaviour


def test_style_mixing_w_plus_input_and_truncation():
    g = _generator()
    z1, z2 = torch.randn(2, STYLE_DIM), torch.randn(2, STYLE_DIM)
    w1, w2 = g.get_latent(z1), g.get_latent(z2)
    img, lat = g([z1, z2], inject_index=2, return_latents=True, randomize_noise=False)
    assert lat.shape == (2, g.n_latent, STYLE_DIM)
    torch.testing.assert_close(lat[:, :2], w1[:, None].expand(2, 2, -1))
    torch.testing.assert_close(lat[:, 2:], w2[:, None].expand(2, 4, -1))
    img_wplus, none = g([lat], input_is_latent=True, randomize_noise=False)
    assert none is None
    torch.testing.assert_close(img, img_wplus)
    img_z, _ = g([z1], randomize_noise=False)
    img_w, _ = g([w1], input_is_latent=True, randomize_noise=False)
    img_w_all, _ = g(w1[:, None].repeat(1, g.n_latent, 1), input_is_latent=True,
                     randomize_noise=False)  # fmt: skip
    torch.testing.assert_close(img_z, img_w)
    torch.testing.assert_close(img_z, img_w_all)
    assert img_z.shape == (2, 3, 16, 16)
    mean = g.mean_latent(64)
    trunc, _ = g([torch.randn(3, STYLE_DIM)], truncation=0, truncation_latent=mean,
                 randomize_noise=False)  # fmt: skip
    torch.testing.assert_close(trunc, trunc[:1].expand_as(trunc))


def test_noise_inputs_buffers_and_randomisation():
    g = _generator()
    with torch.no_grad():
        for m in g.modules():
            if m.__class__.__name__ == "NoiseInjection":
                m.weight.fill_(0.5)
    z = torch.randn(1, STYLE_DIM)
    a, _ = g([z], randomize_noise=False)
    b, _ = g([z], noise=[getattr(g.noises, f"noise_{i}") for i in range(g.num_layers)])
    torch.testing.assert_close(a, b)
    c, _ = g([z], noise=g.make_noise())
    assert not torch.allclose(a, c)


def test_gradients_reach_the_mapping_network_and_the_discriminator():
    g = _generator()
    img, _ = g([torch.randn(2, STYLE_DIM)])
    d = Discriminator(16, channels=CH)
    logits = d(img)
    assert logits.shape == (2, 1)
    logits.sum().backward()
    for p in (g.style[1].weight, g.style[2].bias, g.input.input, d.convs[0][0].weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert d(torch.randn(8, 3, 16, 16)).shape == (8, 1)


# ---------------------------------------------------------------- checkpoint I/O


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_save_load_round_trip_gives_identical_outputs(tmp_path, suffix):
    g_ema, g, d = _generator(), _generator(), Discriminator(16, channels=CH)
    path = tmp_path / f"ckpt{suffix}"
    save_generator(path, g_ema, g=g, d=d, latent_avg=g_ema.mean_latent(16))
    loaded = load_generator(path)
    assert (loaded.size, loaded.style_dim, loaded.n_mlp, loaded.n_latent) == (16, 32, 2, 6)
    assert {r: loaded.channels[r] for r in CH} == CH
    z = torch.randn(3, STYLE_DIM)
    torch.testing.assert_close(loaded([z], randomize_noise=False)[0],
                               g_ema([z], randomize_noise=False)[0], rtol=0, atol=0)  # fmt: skip
    other = load_generator(path, size=16, style_dim=32, channels=CH, key="g")
    torch.testing.assert_close(other.style[1].weight, g.style[1].weight, rtol=0, atol=0)
    if suffix == ".pt":
        ckpt = torch.load(path, weights_only=True)
        assert set(ckpt) == {"g_ema", "g", "d", "latent_avg", "args"}
        assert ckpt["args"]["size"] == 16 and ckpt["args"]["latent"] == 32


def test_load_generator_accepts_a_bare_state_dict(tmp_path):
    g = _generator()
    torch.save(g.state_dict(), tmp_path / "bare.pt")
    z = torch.randn(1, STYLE_DIM)
    out = load_generator(tmp_path / "bare.pt")([z], randomize_noise=False)[0]
    torch.testing.assert_close(out, g([z], randomize_noise=False)[0], rtol=0, atol=0)


def test_checkpoint_errors_name_the_problem_and_the_fix(tmp_path):
    good = tmp_path / "g.pt"
    save_generator(good, _generator())
    with pytest.raises(ValueError, match=r"pass size=16 \(or size=None"):
        load_generator(good, size=32)
    with pytest.raises(ValueError, match="pass style_dim=None"):
        load_generator(good, style_dim=512)
    with pytest.raises(ValueError, match="pass channel_multiplier=None and channels=None"):
        load_generator(good, channel_multiplier=2)

    cases = {
        "list.pt": ([torch.zeros(1)], r"^list\.pt is a list, not a StyleGAN2 generator$"),
        "nokey.pt": ({"model": {"w": 1}, "step": 3}, r"nokey\.pt is a dict of another kind, not"),
        "dit.pt": ({"x_embedder.proj.weight": torch.zeros(2, 2), "pos_embed": torch.zeros(1)},
                   r"DiT state dict, not a StyleGAN2 .*diffusion_transformer\.sample ckpt="),
        "other.pt": ({"fc.weight": torch.zeros(2, 2)}, r"some other model .*convert it to rosin"),
        "nvlabs.pt": ({"g_ema": {"mapping.fc0.weight": torch.zeros(2, 2),
                                 "synthesis.b4.const": torch.zeros(1)}},
                      r"NVlabs StyleGAN2/ADA state dict .*convert_weight\.py"),
    }  # fmt: skip
    for name, (obj, message) in cases.items():
        torch.save(obj, tmp_path / name)
        with pytest.raises(ValueError, match=message):
            load_generator(tmp_path / name)

    broken = torch.load(good, weights_only=True)
    del broken["g_ema"]["convs.1.noise.weight"]
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match="does not match a rosinality .*Missing key.*re-save it"):
        load_generator(tmp_path / "broken.pt")
    (tmp_path / "network.pkl").write_bytes(b"\x80\x04N.")
    with pytest.raises(ValueError, match="NVlabs StyleGAN2 format.*convert it to rosinality"):
        load_generator(tmp_path / "network.pkl")


def test_architecture_errors():
    with pytest.raises(ValueError, match="power of two"):
        Generator(12, STYLE_DIM, 2, channels=CH)
    with pytest.raises(ValueError, match=r"no width for resolutions \[16\]"):
        Generator(16, style_dim=8, n_mlp=1, channels={4: 8, 8: 8})
    g = _generator()
    with pytest.raises(ValueError, match="needs truncation_latent; pass G.mean_latent"):
        g([torch.randn(1, STYLE_DIM)], truncation=0.5)
    with pytest.raises(ValueError, match=r"W\+ code needs shape \[N, 6, 32\]"):
        g([torch.randn(1, 5, STYLE_DIM)], input_is_latent=True)
    with pytest.raises(ValueError, match="batch size that is a multiple of 4"):
        Discriminator(16, channels=CH)(torch.randn(6, 3, 16, 16))
