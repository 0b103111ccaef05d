"""Layer-by-layer tokenisation with chunking, per-token linear maps and G.pt's identity at init."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gpt_checkpoints.model.gpt import Gpt, ParameterTokenizer, PerTokenLinear
from gpt_checkpoints.params.layout import ParamLayout
from gpt_checkpoints.tasks.networks import MLP


def test_chunking_matches_the_thesis_example():
    # Sec. 3.2.2: M = 1000 and a 10 x 768 weight -> seven tokens of 1000 and one of 680.
    tok = ParameterTokenizer([10 * 768], max_token_size=1000)
    assert tok.token_sizes == [1000] * 7 + [680]


def test_tokenize_round_trip_with_chunking():
    sizes = [640, 10, 100, 10]
    tok = ParameterTokenizer(sizes, max_token_size=256)
    assert tok.token_sizes == [256, 256, 128, 10, 100, 10]
    flat = torch.randn(3, sum(sizes))
    tokens = tok.tokenize(flat)
    assert tokens.shape == (3, 6, 256)
    assert torch.equal(tok.detokenize(tokens), flat)
    # token k holds consecutive values of the flat vector, padding is zero
    assert torch.equal(tokens[:, 2, :128], flat[:, 512:640])
    assert torch.count_nonzero(tokens[:, 2, 128:]) == 0
    assert torch.equal(tokens[:, 3, :10], flat[:, 640:650])


def test_tokenizer_without_chunking_is_one_token_per_tensor():
    tok = ParameterTokenizer([640, 10, 100, 10])
    assert tok.token_sizes == [640, 10, 100, 10]


def test_tokenizer_rejects_wrong_length():
    tok = ParameterTokenizer([4, 2])
    with pytest.raises(ValueError, match="do not match"):
        tok.tokenize(torch.zeros(1, 7))


def test_per_token_linear_equals_separate_linears():
    in_sizes, out_sizes = [5, 3, 7], [4, 4, 4]
    layer = PerTokenLinear(in_sizes, out_sizes)
    x = torch.zeros(2, 3, 7)
    refs = []
    for k, (a, b) in enumerate(zip(in_sizes, out_sizes, strict=True)):
        lin = nn.Linear(a, b)
        with torch.no_grad():
            lin.weight.copy_(layer.weight[k, :a, :b].T)
            lin.bias.copy_(layer.bias[k, :b])
        x[:, k, :a] = torch.randn(2, a)
        refs.append(lin(x[:, k, :a]))
    torch.testing.assert_close(layer(x), torch.stack(refs, 1))


def test_layout_round_trip_and_errors():
    layout = ParamLayout.from_module(MLP(64))
    flat = torch.randn(4, layout.num_params)
    assert torch.equal(layout.flatten(layout.unflatten(flat)), flat)
    with pytest.raises(ValueError, match="does not fit this task"):
        layout.unflatten(torch.zeros(1, 761))
    bad = layout.unflatten(flat)
    bad["fc1.weight"] = torch.zeros(4, 10, 65)
    with pytest.raises(ValueError, match="fc1.weight"):
        layout.flatten(bad)


def _gpt(**kw) -> Gpt:
    shapes = ParamLayout.from_module(MLP(64)).entries  # tensors of 640, 10, 100, 10 values
    return Gpt(shapes, hidden_size=32, depth=2, num_heads=2, max_token_size=32, **kw)


def test_fresh_gpt_returns_its_input_theta():
    """Zero-initialised decoders + the global residual: G(theta*_j, theta, l, l*, j) = theta."""
    torch.manual_seed(0)
    model = _gpt()
    theta, x = torch.randn(5, 760), torch.randn(5, 760)
    out = model(x, torch.randint(0, 1000, (5,)), theta, torch.rand(5), torch.rand(5))
    assert torch.equal(out, theta)


def test_gpt_learns_through_the_decoders():
    model = _gpt()
    theta, target = torch.randn(8, 760), torch.randn(8, 760)
    out = model(
        torch.randn(8, 760), torch.randint(0, 1000, (8,)), theta, torch.rand(8), torch.rand(8)
    )
    ((out - target) ** 2).mean().backward()
    assert model.decoder.weight.grad.abs().sum() > 0
    # padded (masked) entries of the per-token weights get no gradient
    assert model.decoder.weight.grad[~model.decoder.mask.bool()].abs().sum() == 0


def test_gpt_output_depends_on_the_prompt_after_training_a_step():
    model = _gpt()
    with torch.no_grad():
        model.decoder.weight.normal_(std=0.1)
        model.decoder.weight.mul_(model.decoder.mask)
    args = (
        torch.randn(2, 760),
        torch.tensor([5, 5]),
        torch.randn(2, 760),
        torch.tensor([0.5, 0.5]),
    )
    a = model(*args, torch.tensor([0.1, 0.1]))
    b = model(*args, torch.tensor([0.9, 0.9]))
    assert not torch.allclose(a, b)
