"""The task networks (thesis Sec. 3.3, and the released G.pt's ``data_gen/``) and their
hidden-unit permutation groups (Sec. 3.2.1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gpt_checkpoints.tasks.base import PermutationGroup


class MLP(nn.Module):
    """The MNIST MLP of Sec. 3.3: input -> 10 hidden units (ReLU) -> 10 classes (784-10-10)."""

    def __init__(self, in_features: int = 784, hidden: int = 10, num_classes: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class CNN(nn.Module):
    """The CIFAR-10 CNN of Sec. 3.3: two 3x3 conv layers (ReLU), global average pooling, linear."""

    def __init__(self, in_channels: int = 3, channels: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.fc(x.mean(dim=(-2, -1)))


class ConvNet(nn.Module):
    """The CIFAR-10 network of the released G.pt (official ``data_gen/train_cifar10.ConvNet``):
    conv 3 -> 16 (3x3, stride 2) and 16 -> 32 (3x3), both without bias, ReLU, global average
    pooling, linear 32 -> 10: 5,370 parameters."""

    def __init__(self, in_channels: int = 3, widths: tuple[int, int] = (16, 32)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=2, padding=1, bias=False)
        self.conv2 = nn.Conv2d(widths[0], widths[1], 3, stride=1, padding=1, bias=False)
        self.fc = nn.Linear(widths[1], 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.fc(x.mean(dim=(-2, -1)))


class OfficialActor(nn.Module):
    """The Cartpole policy of the released G.pt (official ``data_gen/train_rl.VisActorCritic``
    for Isaac Gym's continuous Cartpole): ``log_std`` [1], then ``actor`` 4 -> 32 -> 32 -> 1
    (SELU), in that state-dict order."""

    def __init__(self, obs_dim: int = 4, hidden: int = 32, act_dim: int = 1) -> None:
        super().__init__()
        self.actor = nn.Sequential(
            nn.Linear(obs_dim, hidden), nn.SELU(), nn.Linear(hidden, hidden), nn.SELU(),
            nn.Linear(hidden, act_dim),
        )  # fmt: skip
        self.log_std = nn.Parameter(torch.zeros(act_dim))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.actor(obs)


def mlp_groups(hidden: int) -> tuple[PermutationGroup, ...]:
    return ((hidden, (("fc1.weight", 0), ("fc1.bias", 0), ("fc2.weight", 1))),)


def cnn_groups(channels: int) -> tuple[PermutationGroup, ...]:
    return (
        (channels, (("conv1.weight", 0), ("conv1.bias", 0), ("conv2.weight", 1))),
        (channels, (("conv2.weight", 0), ("conv2.bias", 0), ("fc.weight", 1))),
    )


def convnet_groups(widths: tuple[int, int] = (16, 32)) -> tuple[PermutationGroup, ...]:
    """Official ``random_permute_cnn``: the channels of each bias-free conv."""
    return (
        (widths[0], (("conv1.weight", 0), ("conv2.weight", 1))),
        (widths[1], (("conv2.weight", 0), ("fc.weight", 1))),
    )


def actor_groups(hidden: int = 32) -> tuple[PermutationGroup, ...]:
    """Official ``random_permute_actor``: the units of both hidden layers."""
    return (
        (hidden, (("actor.0.weight", 0), ("actor.0.bias", 0), ("actor.2.weight", 1))),
        (hidden, (("actor.2.weight", 0), ("actor.2.bias", 0), ("actor.4.weight", 1))),
    )
