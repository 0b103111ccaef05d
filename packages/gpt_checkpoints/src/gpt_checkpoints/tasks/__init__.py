"""The tasks G.pt learns from, by name (thesis Sec. 3.3): ``mlp_digits``, ``cnn_digits`` (offline
defaults on scikit-learn's digits), ``mlp_mnist``, ``cnn_cifar10`` (the released datasets' tasks)
and ``cartpole`` (PPO, ``tasks.cartpole``).

``base`` defines what a task is, ``networks`` the architectures and their permutation groups,
``supervised`` and ``cartpole`` the recipes, ``sources`` and ``vision_io`` the data.
"""

from __future__ import annotations

import inspect
from importlib.resources import files
from typing import Any

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
    "TASKS",
    "build_task",
    "task_from_recipe",
    "task_network",
    "task_permutation_groups",
    "task_recipe",
]


#: The supervised tasks' structure: network, data source, permutation groups. Their recipes
#: (epochs, SGD settings) are written once, in ``conf/task/<name>.yaml`` (``task_recipe``).
_SUPERVISED = {
    "mlp_digits": (lambda: MLP(64), "digits", lambda: mlp_groups(10)),
    "mlp_mnist": (lambda: MLP(784), "mnist", lambda: mlp_groups(10)),
    "cnn_digits": (lambda: CNN(in_channels=1), "digits_image", lambda: cnn_groups(16)),
    "cnn_cifar10": (lambda: ConvNet(), "cifar10", convnet_groups),
}
TASKS = (*_SUPERVISED, "cartpole")


def task_network(name: str) -> nn.Module:
    """The network of a task, without its data: what a G.pt's layout is checked against. The
    released models use ``mlp_mnist`` (784-10-10), ``cnn_cifar10`` (``ConvNet``) and, for
    ``cartpole``, the official actor (``OfficialActor``; this package's own PPO Cartpole task
    trains a discrete policy, ``tasks.cartpole.PolicyMLP``)."""
    if name == "cartpole":
        return OfficialActor()
    if name not in _SUPERVISED:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return _SUPERVISED[name][0]()


def task_permutation_groups(name: str) -> tuple[PermutationGroup, ...]:
    """The hidden-unit permutation groups (Sec. 3.2.1) of ``task_network(name)``."""
    return actor_groups() if name == "cartpole" else _SUPERVISED[name][2]()


def task_recipe(name: str) -> dict[str, Any]:
    """The recipe of ``conf/task/<name>.yaml``, the one place a task's numbers are written
    (Sec. 3.3; ``mlp_mnist`` and ``cnn_cifar10``: the released datasets' official data_gen)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    from omegaconf import OmegaConf

    text = (files("gpt_checkpoints.conf") / "task" / f"{name}.yaml").read_text()
    return OmegaConf.to_container(OmegaConf.create(text).recipe, resolve=True)


def build_task(name: str, data_root: str | None = None, **overrides: Any) -> Task:
    """A task by name (``TASKS``) with its recipe (``task_recipe``) under ``overrides``:
    ``mlp_digits``, ``cnn_digits`` (offline, scikit-learn's digits), ``mlp_mnist``,
    ``cnn_cifar10`` (torchvision's on-disk layouts under ``data_root``) or ``cartpole``."""
    recipe = {**task_recipe(name), **overrides}
    if name == "cartpole":
        return CartpoleTask(**recipe)
    network, source, groups = _SUPERVISED[name]
    return SupervisedTask(name, network(), source, groups(), data_root=data_root, **recipe)


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
