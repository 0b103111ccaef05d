import math

import numpy as np
import pytest
import torch

from common.nn.layers import (
    Attention,
    FrequencyEmbedder,
    GPT2Block,
    LabelEmbedder,
    TimestepEmbedder,
    get_2d_sincos_pos_embed,
    modulate,
    sinusoidal_embedding,
)


def test_modulate_is_per_sample_affine():
    x = torch.randn(2, 5, 4)
    shift, scale = torch.randn(2, 4), torch.randn(2, 4)
    out = modulate(x, shift, scale)
    for i in range(2):
        torch.testing.assert_close(out[i], x[i] * (1 + scale[i]) + shift[i])


def test_attention_matches_explicit_softmax():
    attn = Attention(dim=8, num_heads=2)
    x = torch.randn(3, 5, 8)
    qkv = attn.qkv(x).reshape(3, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(4), dim=-1)
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(3, 5, 8))
    torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)


def test_attention_rejects_indivisible_heads():
    with pytest.raises(ValueError, match="not divisible"):
        Attention(dim=10, num_heads=3)


def test_sinusoidal_embedding_cos_then_sin():
    emb = sinusoidal_embedding(torch.tensor([0.0, 2.0]), 8)
    torch.testing.assert_close(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    freqs = torch.exp(-math.log(10000) * torch.arange(4) / 4)
    torch.testing.assert_close(emb[1], torch.cat([torch.cos(2 * freqs), torch.sin(2 * freqs)]))
    assert sinusoidal_embedding(torch.tensor([1.0]), 7).shape == (1, 7)


def test_timestep_and_frequency_embedders_shapes():
    assert TimestepEmbedder(32)(torch.tensor([0, 999])).shape == (2, 32)
    emb = FrequencyEmbedder(16, scale=100.0)
    out = emb(torch.tensor([0.1, 0.2]))
    assert out.shape == (2, 16) and not torch.allclose(out[0], out[1])


def test_label_embedder_null_class_and_dropout():
    emb = LabelEmbedder(num_classes=10, hidden_size=4, dropout_prob=0.1)
    assert emb.embedding_table.num_embeddings == 11
    labels = torch.tensor([1, 2, 3])
    forced = emb(labels, train=False, force_drop_ids=torch.tensor([1, 0, 1]))
    torch.testing.assert_close(forced[0], emb.embedding_table.weight[10])
    torch.testing.assert_close(forced[1], emb.embedding_table.weight[2])
    # In eval mode nothing is dropped; in training about dropout_prob of the labels are.
    torch.testing.assert_close(emb(labels, train=False), emb.embedding_table(labels))
    dropped = emb.token_drop(torch.zeros(20000, dtype=torch.long))
    assert abs((dropped == 10).float().mean().item() - 0.1) < 0.01
    assert LabelEmbedder(10, 4, 0.0).embedding_table.num_embeddings == 10


def test_2d_sincos_layout():
    emb = get_2d_sincos_pos_embed(8, 3)
    assert emb.shape == (9, 8)
    # Patch (row r, col c) at index 3r + c: first half encodes the column, second half the row.
    col_part, row_part = emb[:, :4], emb[:, 4:]
    np.testing.assert_allclose(col_part[1], [np.sin(1), np.sin(0.01), np.cos(1), np.cos(0.01)])
    np.testing.assert_allclose(row_part[1], [0, 0, 1, 1])
    np.testing.assert_allclose(row_part[3], col_part[1])
    with pytest.raises(ValueError, match="multiple of 4"):
        get_2d_sincos_pos_embed(6, 2)


def test_gpt2_block_is_pre_ln_residual():
    block = GPT2Block(16, 4)
    x = torch.randn(2, 7, 16)
    h = x + block.attn(block.ln_1(x))
    torch.testing.assert_close(block(x), h + block.mlp(block.ln_2(h)))
    # Non-causal: the first token depends on the last.
    y = x.clone()
    y[:, -1] += torch.randn(16)
    assert not torch.allclose(block(x)[:, 0], block(y)[:, 0])
