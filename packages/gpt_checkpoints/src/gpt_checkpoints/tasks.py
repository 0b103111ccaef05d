"""Task networks and their training recipes: the runs G.pt learns from (thesis Sec. 3.2.1, 3.3).

A task fixes a network architecture (its ``ParamLayout``), how fresh parameters are drawn, how a
run trains them (Algorithm 1) and which metrics a checkpoint carries. Runs train *batched*: the
parameters of R runs are stacked along a leading axis and updated together (``torch.func.vmap``
over the network, one optimizer over the stacked tensors). SGD, momentum, weight decay and Adam act
element-wise, so a stacked run follows exactly the trajectory it would follow alone; every run's
randomness (initialisation, data order, checkpoint iterations) comes from its own seed.

Supervised recipe (Sec. 3.3): SGD, momentum 0.9, lr 0.1, weight decay 5e-4, half-period cosine
annealing, 25 epochs for the MLP and 50 for the CNN, weights and biases ~ U(-1/sqrt(n), 1/sqrt(n))
with n the fan-in. Cartpole (PPO) lives in ``gpt_checkpoints.cartpole``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from gpt_checkpoints.layout import ParamLayout
from gpt_checkpoints.sources import SupervisedData, load_source

# A hidden-unit group for permutation augmentation (Sec. 3.2.1): ``size`` units, and the
# (parameter name, axis) pairs indexed by those units, outgoing first, then the next layer's input.
PermutationGroup = tuple[int, tuple[tuple[str, int], ...]]

INIT_SCHEMES = ("fan_in_uniform", "kaiming", "xavier", "normal")

# Step callback of ``Task.train_runs``: (iteration, flat parameters [R, P]) after that many updates.
StepCallback = Callable[[int, torch.Tensor], None]


# ----------------------------------------------------------------------------- networks
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


def _fan_in(shape: tuple[int, ...], layout: ParamLayout, name: str) -> int:
    """Fan-in of the layer a parameter belongs to (a bias takes its weight's fan-in)."""
    if name.endswith("bias"):
        weight = dict(layout.entries)[name[: -len("bias")] + "weight"]
        return math.prod(weight[1:])
    return math.prod(shape[1:])


def init_params(
    layout: ParamLayout, n: int, generator: torch.Generator, scheme: str = "fan_in_uniform"
) -> torch.Tensor:
    """``n`` fresh parameter vectors ``[n, P]``.

    ``fan_in_uniform``: weights and biases ~ U(-1/sqrt(n), 1/sqrt(n)), the scheme of every run in
    the datasets (Sec. 3.4.3). The others are out-of-distribution initialisations for Fig. 3.6:
    ``kaiming`` (He normal, fan-in, ReLU gain), ``xavier`` (Glorot uniform), ``normal``
    (N(0, 0.1^2)); their biases start at zero.
    """
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"unknown init scheme {scheme!r}; choose one of {', '.join(INIT_SCHEMES)}")
    parts = {}
    for name, shape in layout.entries:
        fan_in = _fan_in(shape, layout, name)
        is_bias = name.endswith("bias")
        if scheme == "fan_in_uniform":
            bound = 1.0 / math.sqrt(fan_in)
            p = (torch.rand(n, *shape, generator=generator) * 2 - 1) * bound
        elif is_bias:
            p = torch.zeros(n, *shape)
        elif scheme == "kaiming":
            p = torch.randn(n, *shape, generator=generator) * math.sqrt(2.0 / fan_in)
        elif scheme == "xavier":
            fan_out = shape[0] * math.prod(shape[2:])
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            p = (torch.rand(n, *shape, generator=generator) * 2 - 1) * bound
        else:
            p = torch.randn(n, *shape, generator=generator) * 0.1
        parts[name] = p
    return layout.flatten(parts)


# ----------------------------------------------------------------------------- tasks
@dataclass
class Task(ABC):
    """Base class: an architecture, its metrics, its recipe. Subclasses implement the recipe."""

    name: str
    network: nn.Module
    metric_names: tuple[str, ...]
    permutation_groups: tuple[PermutationGroup, ...]
    iterations: int = 0
    layout: ParamLayout = field(init=False)

    def __post_init__(self) -> None:
        self.layout = ParamLayout.from_module(self.network)

    def init(self, n: int, generator: torch.Generator, scheme: str = "fan_in_uniform"):
        return init_params(self.layout, n, generator, scheme)

    # Dimensions of one input sample (1 for feature vectors, 3 for images).
    input_ndim: int = 1

    def forward(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Outputs of the networks ``theta [N, P]`` on inputs ``x``: shared by all networks
        (``[B, *sample]``) or one batch per network (``[N, B, *sample]``)."""
        params = self.layout.unflatten(theta)
        per_network = x.ndim == self.input_ndim + 2
        single = lambda p, inputs: functional_call(self.network, p, (inputs,))
        return vmap(single, in_dims=(0, 0 if per_network else None))(params, x)

    @abstractmethod
    def train_runs(self, theta0: torch.Tensor, seeds: list[int], callback: StepCallback) -> None:
        """Train the runs of ``seeds`` from ``theta0 [N, P]``, calling ``callback`` every step."""

    @abstractmethod
    def evaluate(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """The metrics (``metric_names``) of the networks ``theta [N, P]``."""

    def config(self) -> dict:
        """What identifies this task's data (written to the dataset manifest)."""
        return {"name": self.name, "iterations": self.iterations}


class SupervisedTask(Task):
    """Classification with the SGD recipe of Sec. 3.3, batched over runs."""

    def __init__(
        self,
        name: str,
        network: nn.Module,
        source: str,
        permutation_groups: tuple[PermutationGroup, ...],
        epochs: int,
        batch_size: int = 64,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        data_root: str | None = None,
        eval_chunk: int = 1024,
    ) -> None:
        super().__init__(
            name,
            network,
            ("train_loss", "test_loss", "train_error", "test_error"),
            permutation_groups,
        )
        self.source = source
        self.data_root = data_root
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.eval_chunk = eval_chunk
        self._data: SupervisedData | None = None
        self.input_ndim = 1 if isinstance(network, MLP) else 3
        self.iterations = epochs * (self.data.x_train.shape[0] // batch_size)

    @property
    def data(self) -> SupervisedData:
        if self._data is None:
            self._data = load_source(self.source, self.data_root)
        return self._data

    def config(self) -> dict:
        return {
            "name": self.name,
            "source": self.source,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "momentum": self.momentum,
            "weight_decay": self.weight_decay,
            "iterations": self.iterations,
        }

    def loss_fn(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy per network: ``theta [N, P]``, ``x [N, B, ...]``, ``y [N, B]``."""
        logits = self.forward(theta, x)
        return (
            F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
            .view(y.shape)
            .mean(1)
        )

    def train_runs(self, theta0: torch.Tensor, seeds: list[int], callback: StepCallback) -> None:
        """Algorithm 1 for ``len(seeds)`` runs at once; ``callback(i, theta)`` sees every iterate.

        Run r shuffles the training set with ``Generator(seeds[r] + 1)`` each epoch (the seed itself
        draws the initialisation, see ``collect``), so its trajectory does not depend on which
        other runs share its batch.
        """
        data = self.data
        x_train, y_train = data.x_train, data.y_train
        n_train = x_train.shape[0]
        steps_per_epoch = n_train // self.batch_size
        theta = theta0.clone().requires_grad_(True)
        opt = torch.optim.SGD(
            [theta], lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
        )
        total = self.iterations
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda i: 0.5 * (1.0 + math.cos(math.pi * min(i, total) / total))
        )
        gens = [torch.Generator().manual_seed(int(s) + 1) for s in seeds]
        callback(0, theta.detach())
        it = 0
        for _ in range(self.epochs):
            order = torch.stack([torch.randperm(n_train, generator=g) for g in gens])
            for b in range(steps_per_epoch):
                idx = order[:, b * self.batch_size : (b + 1) * self.batch_size]
                loss = self.loss_fn(theta, x_train[idx], y_train[idx]).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                it += 1
                callback(it, theta.detach())

    @torch.no_grad()
    def evaluate(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Train/test cross-entropy and error (fraction misclassified) of each network."""
        data = self.data
        out: dict[str, list[torch.Tensor]] = {k: [] for k in self.metric_names}
        for chunk in theta.split(self.eval_chunk):
            for split, x, y in (
                ("train", data.x_train, data.y_train),
                ("test", data.x_test, data.y_test),
            ):
                logits = self.forward(chunk, x)  # [n, B, classes]
                ce = F.cross_entropy(
                    logits.transpose(1, 2), y.expand(chunk.shape[0], -1), reduction="none"
                )
                out[f"{split}_loss"].append(ce.mean(1))
                out[f"{split}_error"].append((logits.argmax(-1) != y).float().mean(1))
        return {k: torch.cat(v) for k, v in out.items()}


def _mlp_groups(hidden: int) -> tuple[PermutationGroup, ...]:
    return ((hidden, (("fc1.weight", 0), ("fc1.bias", 0), ("fc2.weight", 1))),)


def _cnn_groups(channels: int) -> tuple[PermutationGroup, ...]:
    return (
        (channels, (("conv1.weight", 0), ("conv1.bias", 0), ("conv2.weight", 1))),
        (channels, (("conv2.weight", 0), ("conv2.bias", 0), ("fc.weight", 1))),
    )


def build_task(name: str, data_root: str | None = None, **overrides) -> Task:
    """A task by name: ``mlp_digits``, ``cnn_digits`` (offline defaults), ``mlp_mnist``,
    ``cnn_cifar10`` (torchvision's on-disk layouts under ``data_root``) or ``cartpole``."""
    if name == "mlp_digits":
        kw = {"epochs": 25, **overrides}
        return SupervisedTask(name, MLP(64), "digits", _mlp_groups(10), data_root=data_root, **kw)
    if name == "mlp_mnist":
        kw = {"epochs": 25, **overrides}
        return SupervisedTask(name, MLP(784), "mnist", _mlp_groups(10), data_root=data_root, **kw)
    if name == "cnn_digits":
        kw = {"epochs": 50, **overrides}
        net = CNN(in_channels=1)
        return SupervisedTask(name, net, "digits_image", _cnn_groups(16), data_root=data_root, **kw)
    if name == "cnn_cifar10":
        kw = {"epochs": 50, **overrides}
        net = CNN(in_channels=3)
        return SupervisedTask(name, net, "cifar10", _cnn_groups(16), data_root=data_root, **kw)
    if name == "cartpole":
        from gpt_checkpoints.cartpole import CartpoleTask

        return CartpoleTask(**overrides)
    raise ValueError(
        f"unknown task {name!r}; choose one of mlp_digits, cnn_digits, mlp_mnist, cnn_cifar10, "
        "cartpole"
    )


def task_from_recipe(name: str, data_root: str | None, recipe: dict | None) -> Task:
    """Rebuild a task from the recipe recorded in a dataset manifest or G.pt checkpoint."""
    import inspect

    recipe = dict(recipe or {})
    if name == "cartpole":
        from gpt_checkpoints.cartpole import CartpoleTask

        accepted = inspect.signature(CartpoleTask.__init__).parameters
    else:
        accepted = inspect.signature(SupervisedTask.__init__).parameters
    skip = {"self", "name", "network", "source", "permutation_groups", "data_root"}
    kwargs = {k: v for k, v in recipe.items() if k in accepted and k not in skip}
    return build_task(name, data_root=data_root, **kwargs)
