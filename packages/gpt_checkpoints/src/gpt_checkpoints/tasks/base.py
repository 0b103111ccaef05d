"""What every task is: a network (its ``ParamLayout``), how fresh parameters are drawn, how a run
trains them (Algorithm 1) and which metrics a checkpoint carries (thesis Sec. 3.2.1, 3.3).

Runs train *batched*: the parameters of R runs are stacked along a leading axis and updated
together (``torch.func.vmap`` over the network, one optimizer over the stacked tensors). SGD,
momentum, weight decay and Adam act element-wise, so a stacked run follows exactly the trajectory
it would follow alone; every run's randomness (initialisation, data order, checkpoint iterations)
comes from its own seed.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call, vmap

from gpt_checkpoints.params.layout import ParamLayout

# A hidden-unit group for permutation augmentation (Sec. 3.2.1): ``size`` units, and the
# (parameter name, axis) pairs indexed by those units, outgoing first, then the next layer's input.
PermutationGroup = tuple[int, tuple[tuple[str, int], ...]]

INIT_SCHEMES = ("fan_in_uniform", "kaiming", "xavier", "normal")

# Step callback of ``Task.train_runs``: (iteration, flat parameters [R, P]) after that many updates.
StepCallback = Callable[[int, torch.Tensor], None]


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

    #: Where runs train and networks are evaluated (``to``); parameters come and go on the CPU.
    device = torch.device("cpu")

    def __post_init__(self) -> None:
        self.layout = ParamLayout.from_module(self.network)

    def to(self, device: torch.device | str) -> Task:
        """Train and evaluate on ``device`` (``collect device=``); returns the task."""
        self.device = torch.device(device)
        return self

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
