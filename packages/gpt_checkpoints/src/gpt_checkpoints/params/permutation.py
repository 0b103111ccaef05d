"""Permutation augmentation in parameter space (thesis Sec. 3.2.1).

Permuting the hidden units of a layer (the rows of its weight and its bias, i.e. its outgoing
connections) together with the matching input columns of the next layer leaves the network's
function unchanged: ``f_{T(theta)}(x) = f_theta(x)``. A task lists its hidden-unit groups as
``(size, ((param, axis), ...))`` (``tasks.base.PermutationGroup``); convolutional channels
permute the same way as MLP units, along axis 0 of a conv weight and axis 1 of the next
layer's weight. The same permutation is applied to the input checkpoint theta and the target
theta* of a pair.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gpt_checkpoints.params.layout import ParamLayout


def random_permutations(
    groups: Sequence, n: int, generator: torch.Generator | None = None, device=None
) -> list[torch.Tensor]:
    """One independent random permutation ``[n, size]`` per group and per sample."""
    return [
        torch.argsort(torch.rand(n, size, generator=generator), dim=1).to(device)
        for size, _ in groups
    ]


def apply_permutations(
    theta: torch.Tensor, layout: ParamLayout, groups: Sequence, perms: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Permute hidden units of the flat parameter vectors ``theta [n, P]``, sample by sample."""
    params = {k: v.clone() for k, v in layout.unflatten(theta).items()}
    for (size, members), perm in zip(groups, perms, strict=True):
        if perm.shape != (theta.shape[0], size):
            raise ValueError(
                f"permutation of shape {tuple(perm.shape)} for a group of {size} units"
            )
        for name, axis in members:
            p = params[name]
            dim = axis + 1  # skip the batch axis
            view = [p.shape[0]] + [1] * (p.ndim - 1)
            view[dim] = size
            index = perm.view(view).expand_as(p)
            params[name] = torch.gather(p, dim, index)
    return layout.flatten(params)


def permute_pair(
    thetas: Sequence[torch.Tensor],
    layout: ParamLayout,
    groups: Sequence,
    generator: torch.Generator | None = None,
) -> list[torch.Tensor]:
    """Apply the same random permutations to several aligned batches (theta and theta*)."""
    if not groups:
        return list(thetas)
    perms = random_permutations(groups, thetas[0].shape[0], generator, thetas[0].device)
    return [apply_permutations(t, layout, groups, perms) for t in thetas]
