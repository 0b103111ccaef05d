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
    """Base class: an architecture, its metrics, its recipe. Subclasses implement the recipe.
    Metrics are in the released G.pt's units: losses, errors in percent, returns."""

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
        nesterov: bool = False,
        schedule: str = "cosine_step",
        augment: str | None = None,
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
        if schedule not in ("cosine_step", "cosine_epoch"):
            raise ValueError(f"schedule={schedule!r}; choose cosine_step or cosine_epoch")
        if augment not in (None, "flip_crop"):
            raise ValueError(f"augment={augment!r}; choose null or flip_crop")
        self.nesterov, self.schedule, self.augment = nesterov, schedule, augment
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
            "nesterov": self.nesterov,
            "schedule": self.schedule,
            "augment": self.augment,
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
            [theta],
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            nesterov=self.nesterov,
        )
        total = self.iterations
        if self.schedule == "cosine_epoch":  # official data_gen: lr set once per epoch
            total = self.epochs

            def factor(i: int) -> float:
                epoch = min(i // steps_per_epoch, self.epochs)
                return 0.5 * (1.0 + math.cos(math.pi * epoch / total))
        else:

            def factor(i: int) -> float:
                return 0.5 * (1.0 + math.cos(math.pi * min(i, total) / total))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        gens = [torch.Generator().manual_seed(int(s) + 1) for s in seeds]
        callback(0, theta.detach())
        it = 0
        for _ in range(self.epochs):
            order = torch.stack([torch.randperm(n_train, generator=g) for g in gens])
            for b in range(steps_per_epoch):
                idx = order[:, b * self.batch_size : (b + 1) * self.batch_size]
                x = x_train[idx]
                if self.augment == "flip_crop":
                    x = flip_crop(x, gens)
                loss = self.loss_fn(theta, x, y_train[idx]).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                it += 1
                callback(it, theta.detach())

    @torch.no_grad()
    def evaluate(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Train/test cross-entropy and top-1 error in percent (the official unit) of each
        network."""
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
                out[f"{split}_error"].append((logits.argmax(-1) != y).float().mean(1) * 100)
        return {k: torch.cat(v) for k, v in out.items()}


def flip_crop(x: torch.Tensor, gens: list[torch.Generator], pad: int = 4) -> torch.Tensor:
    """Official CIFAR-10 training augmentation per image: horizontal flip with p = 0.5, then a
    random crop of the original size from the image zero-padded by ``pad`` (``x [R, B, C, H,
    W]``, run ``r`` drawing from ``gens[r]``)."""
    r, b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    draws = [
        (torch.rand(b, generator=g) < 0.5, torch.randint(0, 2 * pad, (b, 2), generator=g))
        for g in gens
    ]  # official random_crop draws randint(0, H + 2 pad - H): offsets 0 .. 2 pad - 1
    flips = torch.stack([f for f, _ in draws])  # [R, B]
    offsets = torch.stack([o for _, o in draws])  # [R, B, 2]
    rows = offsets[..., 0, None] + torch.arange(h)  # [R, B, h]
    cols = offsets[..., 1, None] + torch.arange(w)  # [R, B, w]
    cols = torch.where(flips[..., None], cols.flip(-1), cols)
    runs = torch.arange(r)[:, None, None, None]
    images = torch.arange(b)[None, :, None, None]
    crops = padded[runs, images, :, rows[..., :, None], cols[..., None, :]]  # [R, B, h, w, C]
    return crops.permute(0, 1, 4, 2, 3).contiguous()


def _mlp_groups(hidden: int) -> tuple[PermutationGroup, ...]:
    return ((hidden, (("fc1.weight", 0), ("fc1.bias", 0), ("fc2.weight", 1))),)


def _cnn_groups(channels: int) -> tuple[PermutationGroup, ...]:
    return (
        (channels, (("conv1.weight", 0), ("conv1.bias", 0), ("conv2.weight", 1))),
        (channels, (("conv2.weight", 0), ("conv2.bias", 0), ("fc.weight", 1))),
    )


def _convnet_groups(widths: tuple[int, int] = (16, 32)) -> tuple[PermutationGroup, ...]:
    """Official ``random_permute_cnn``: the channels of each bias-free conv."""
    return (
        (widths[0], (("conv1.weight", 0), ("conv2.weight", 1))),
        (widths[1], (("conv2.weight", 0), ("fc.weight", 1))),
    )


def _actor_groups(hidden: int = 32) -> tuple[PermutationGroup, ...]:
    """Official ``random_permute_actor``: the units of both hidden layers."""
    return (
        (hidden, (("actor.0.weight", 0), ("actor.0.bias", 0), ("actor.2.weight", 1))),
        (hidden, (("actor.2.weight", 0), ("actor.2.bias", 0), ("actor.4.weight", 1))),
    )


def task_network(name: str) -> nn.Module:
    """The network of a task, without its data: what a G.pt's layout is checked against. The
    released models use ``mlp_mnist`` (784-10-10), ``cnn_cifar10`` (``ConvNet``) and, for
    ``cartpole``, the official actor (``OfficialActor``; this package's own PPO Cartpole task
    trains a discrete policy, ``cartpole.PolicyMLP``)."""
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
        "mlp_digits": _mlp_groups(10),
        "mlp_mnist": _mlp_groups(10),
        "cnn_digits": _cnn_groups(16),
        "cnn_cifar10": _convnet_groups(),
        "cartpole": _actor_groups(),
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
        return SupervisedTask(name, MLP(64), "digits", _mlp_groups(10), data_root=data_root, **kw)
    if name == "mlp_mnist":  # official data_gen/train_mnist.py
        kw = {**OFFICIAL_RECIPE, "epochs": 25, **overrides}
        return SupervisedTask(name, MLP(784), "mnist", _mlp_groups(10), data_root=data_root, **kw)
    if name == "cnn_digits":
        kw = {"epochs": 50, **overrides}
        net = CNN(in_channels=1)
        return SupervisedTask(name, net, "digits_image", _cnn_groups(16), data_root=data_root, **kw)
    if name == "cnn_cifar10":  # official data_gen/train_cifar10.py
        kw = {**OFFICIAL_RECIPE, "epochs": 50, "augment": "flip_crop", **overrides}
        net = ConvNet()
        return SupervisedTask(name, net, "cifar10", _convnet_groups(), data_root=data_root, **kw)
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
