"""Neuron tokenisation (models.NeuronTokenizer): one token per hidden unit, shared slots, and the
exact permutation equivariance of G.pt that follows from it."""

from __future__ import annotations

import pytest
import torch

from gpt_checkpoints.model.gpt import Gpt, NeuronTokenizer
from gpt_checkpoints.params.permutation import apply_permutations, random_permutations
from gpt_checkpoints.tasks import build_task


def _task(name: str):
    task = build_task(name)
    return task, [(s, tuple(m)) for s, m in task.permutation_groups]


def test_mlp_units_become_tokens_with_their_incoming_bias_and_outgoing_weights():
    task, groups = _task("mlp_digits")
    tok = NeuronTokenizer(task.layout.entries, groups, max_token_size=128)
    # 10 hidden units of 64 incoming weights + 1 bias + 10 outgoing weights, then fc2.bias
    assert tok.token_sizes == [75] * 10 + [10]
    assert tok.slots.tolist() == [0] * 10 + [1]
    flat = torch.randn(3, task.layout.num_params)
    tokens = tok.tokenize(flat)
    assert torch.equal(tok.detokenize(tokens), flat)
    p = task.layout.unflatten(flat)
    unit = 7
    expected = torch.cat([p["fc1.weight"][:, unit], p["fc1.bias"][:, unit, None]], 1)
    expected = torch.cat([expected, p["fc2.weight"][:, :, unit]], 1)
    assert torch.equal(tokens[:, unit, :75], expected)
    assert torch.equal(tokens[:, 10, :10], p["fc2.bias"])


def test_cnn_middle_conv_belongs_to_the_units_it_feeds_and_wide_units_are_chunked():
    task, groups = _task("cnn_digits")
    tok = NeuronTokenizer(task.layout.entries, groups, max_token_size=100)
    flat = torch.randn(2, task.layout.num_params)
    assert torch.equal(tok.detokenize(tok.tokenize(flat)), flat)
    # group 0 keeps conv1's 9 weights + bias; group 1 owns conv2 (16*9 + 1 + 10 outgoing = 155)
    # chunked into 100 + 55, every chunk index of every unit sharing one slot
    assert tok.token_sizes == [10] * 16 + [100] * 16 + [55] * 16 + [10]
    assert tok.slots.tolist() == [0] * 16 + [1] * 16 + [2] * 16 + [3]


def test_neuron_gpt_is_equivariant_to_hidden_unit_permutations():
    torch.manual_seed(0)
    task, groups = _task("mlp_digits")
    layout = task.layout
    model = Gpt(
        layout.entries,
        groups,
        hidden_size=32,
        depth=2,
        num_heads=2,
        max_token_size=128,
        tokenization="neuron",
    )
    with torch.no_grad():  # leave the identity-at-init state so the check is not trivial
        model.decoder.weight.normal_(std=0.1)
        model.pos_embed.normal_(std=0.1)
    theta, x = torch.randn(4, layout.num_params), torch.randn(4, layout.num_params)
    args = (torch.randint(0, 1000, (4,)), torch.rand(4), torch.rand(4))
    perms = random_permutations(groups, 4, torch.Generator().manual_seed(1))
    permute = lambda v: apply_permutations(v, layout, groups, perms)  # noqa: E731
    out = model(x, args[0], theta, *args[1:])
    permuted = model(permute(x), args[0], permute(theta), *args[1:])
    torch.testing.assert_close(permuted, permute(out), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out, theta)


def test_fresh_neuron_gpt_returns_its_input():
    task, groups = _task("mlp_digits")
    model = Gpt(
        task.layout.entries, groups, hidden_size=32, depth=1, num_heads=2, tokenization="neuron"
    )
    theta = torch.randn(3, task.layout.num_params)
    out = model(
        torch.randn_like(theta), torch.tensor([1, 500, 999]), theta, torch.rand(3), torch.rand(3)
    )
    assert torch.equal(out, theta)


def test_neuron_tokenization_needs_groups_and_a_known_name():
    task, groups = _task("mlp_digits")
    with pytest.raises(ValueError, match="tokenization=layer"):
        Gpt(task.layout.entries, hidden_size=16, depth=1, num_heads=2, tokenization="neuron")
    with pytest.raises(ValueError, match="choose layer or neuron"):
        Gpt(task.layout.entries, hidden_size=16, depth=1, num_heads=2, tokenization="units")
    with pytest.raises(ValueError, match="not a parameter"):
        NeuronTokenizer(task.layout.entries, [(10, (("fc9.weight", 0),))])
