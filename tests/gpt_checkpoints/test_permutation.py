"""Permutation augmentation preserves the network function exactly (Sec. 3.2.1)."""

from __future__ import annotations

import pytest
import torch

from gpt_checkpoints.params.permutation import apply_permutations, permute_pair, random_permutations
from gpt_checkpoints.tasks import build_task


@pytest.mark.parametrize("name", ["mlp_digits", "cnn_digits"])
def test_permutation_leaves_outputs_unchanged(name):
    task = build_task(name, epochs=1)
    theta = task.init(6, torch.Generator().manual_seed(0))
    x = task.data.x_test[:32]
    g = torch.Generator().manual_seed(1)
    permuted = apply_permutations(
        theta,
        task.layout,
        task.permutation_groups,
        random_permutations(task.permutation_groups, 6, g),
    )
    assert not torch.allclose(permuted, theta)  # the parameters did move
    torch.testing.assert_close(
        task.forward(permuted, x), task.forward(theta, x), atol=1e-5, rtol=1e-5
    )


def test_same_permutation_for_theta_and_theta_star():
    task = build_task("mlp_digits", epochs=1)
    theta = task.init(4, torch.Generator().manual_seed(0))
    a, b = permute_pair([theta, theta.clone()], task.layout, task.permutation_groups)
    assert torch.equal(a, b)
    # a permutation only reorders values within each parameter tensor
    for name, sl in task.layout.offsets().items():
        assert torch.equal(a[:, sl].sort(1).values, theta[:, sl].sort(1).values), name


def test_hidden_units_move_together():
    task = build_task("mlp_digits", epochs=1)
    theta = task.init(1, torch.Generator().manual_seed(0))
    perm = torch.tensor([[3, 0, 1, 2, 4, 5, 6, 7, 8, 9]])
    out = task.layout.unflatten(
        apply_permutations(theta, task.layout, task.permutation_groups, [perm])
    )
    src = task.layout.unflatten(theta)
    assert torch.equal(out["fc1.weight"][0, 0], src["fc1.weight"][0, 3])
    assert torch.equal(out["fc1.bias"][0, 0], src["fc1.bias"][0, 3])
    assert torch.equal(out["fc2.weight"][0, :, 0], src["fc2.weight"][0, :, 3])
    assert torch.equal(out["fc2.bias"], src["fc2.bias"])
