"""The tasks G.pt learns from, by name (thesis Sec. 3.3): ``mlp_digits``, ``cnn_digits`` (offline
defaults on scikit-learn's digits), ``mlp_mnist``, ``cnn_cifar10`` (the released datasets' tasks)
and ``cartpole`` (PPO, ``tasks.cartpole``).

``base`` defines what a task is, ``networks`` the architectures and their permutation groups,
``supervised`` and ``cartpole`` the recipes, ``sources`` and ``vision_io`` the data.
"""

from __future__ import annotations

import inspect

from torch import nn

from gpt_checkpoints.tasks.base import PermutationGroup, Task
from gpt_checkpoints.tasks.cartpole import CartpoleTask
from gpt_checkpoints.tasks.networks import (
    CNN,
    MLP,
    ConvNet,
    OfficialActor,
    actor_groups,
    cnn_groups,
    convnet_groups,
    mlp_groups,
)
from gpt_checkpoints.tasks.supervised import SupervisedTask

__all__ = [
    "OFFICIAL_RECIPE",
    "build_task",
    "task_from_recipe",
    "task_network",
    "task_permutation_groups",
]


def task_network(name: str) -> nn.Module:
    """The network of a task, without its data: what a G.pt's layout is checked against. The
    released models use ``mlp_mnist`` (784-10-10), ``cnn_cifar10`` (``ConvNet``) and, for
    ``cartpole``, the official actor (``OfficialActor``; this package's own PPO Cartpole task
    trains a discrete policy, ``tasks.cartpole.PolicyMLP``)."""
    networks = {
        "mlp_digits": lambda: MLP(64),
        "mlp_mnist": lambda: MLP(784),
        "cnn_digits": lambda: CNN(in_channels=1),
        "cnn_cifar10": lambda: ConvNet(),
        "cartpole": lambda: OfficialActor(),
    }
    if name not in networks:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(networks)}")
    return networks[name]()


def task_permutation_groups(name: str) -> tuple[PermutationGroup, ...]:
    """The hidden-unit permutation groups (Sec. 3.2.1) of ``task_network(name)``."""
    groups = {
        "mlp_digits": mlp_groups(10),
        "mlp_mnist": mlp_groups(10),
        "cnn_digits": cnn_groups(16),
        "cnn_cifar10": convnet_groups(),
        "cartpole": actor_groups(),
    }
    return groups[name]


#: The released datasets' SGD (official data_gen): Nesterov momentum 0.9, lr 0.1, weight decay
#: 5e-4, batch 128, cosine annealing set once per epoch.
OFFICIAL_RECIPE = {"batch_size": 128, "nesterov": True, "schedule": "cosine_epoch"}


def build_task(name: str, data_root: str | None = None, **overrides) -> Task:
    """A task by name: ``mlp_digits``, ``cnn_digits`` (offline defaults), ``mlp_mnist``,
    ``cnn_cifar10`` (torchvision's on-disk layouts under ``data_root``) or ``cartpole``."""
    if name == "mlp_digits":
        kw = {"epochs": 25, **overrides}
        return SupervisedTask(name, MLP(64), "digits", mlp_groups(10), data_root=data_root, **kw)
    if name == "mlp_mnist":  # official data_gen/train_mnist.py
        kw = {**OFFICIAL_RECIPE, "epochs": 25, **overrides}
        return SupervisedTask(name, MLP(784), "mnist", mlp_groups(10), data_root=data_root, **kw)
    if name == "cnn_digits":
        kw = {"epochs": 50, **overrides}
        net = CNN(in_channels=1)
        return SupervisedTask(name, net, "digits_image", cnn_groups(16), data_root=data_root, **kw)
    if name == "cnn_cifar10":  # official data_gen/train_cifar10.py
        kw = {**OFFICIAL_RECIPE, "epochs": 50, "augment": "flip_crop", **overrides}
        net = ConvNet()
        return SupervisedTask(name, net, "cifar10", convnet_groups(), data_root=data_root, **kw)
    if name == "cartpole":
        return CartpoleTask(**overrides)
    raise ValueError(
        f"unknown task {name!r}; choose one of mlp_digits, cnn_digits, mlp_mnist, cnn_cifar10, "
        "cartpole"
    )


def task_from_recipe(name: str, data_root: str | None, recipe: dict | None) -> Task:
    """Rebuild a task from the recipe recorded in a dataset manifest or G.pt checkpoint."""
    recipe = dict(recipe or {})
    if name == "cartpole":
        accepted = inspect.signature(CartpoleTask.__init__).parameters
    else:
        accepted = inspect.signature(SupervisedTask.__init__).parameters
    skip = {"self", "name", "network", "source", "permutation_groups", "data_root"}
    kwargs = {k: v for k, v in recipe.items() if k in accepted and k not in skip}
    return build_task(name, data_root=data_root, **kwargs)
