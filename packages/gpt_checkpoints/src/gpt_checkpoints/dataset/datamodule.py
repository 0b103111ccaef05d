"""Training data for G.pt: pairs of checkpoints from the same run (thesis Sec. 3.2.2, Alg. 2).

A batch holds ``(theta, theta*, l, l*)``: a run drawn uniformly from the training split, two
distinct checkpoints drawn uniformly from it, theta the earlier and theta* the later one (any
distance apart, from initial and final down to neighbours). Runs are split into train and test
by run, never by checkpoint. ``initial_fraction`` (0 in the thesis) makes that share of the
pairs start from the run's initial checkpoint, the input of one-step training from scratch
(Sec. 3.4.1); small compute budgets reach good one-step results sooner with it. Batch ``b`` is
a pure function of ``(seed, b, rank)``, so a resumed job reads exactly the batches the
uninterrupted one would have.

``ParameterNormalizer`` implements Sec. 3.3's normalisation: parameters are scaled so that their
marginal standard deviation matches 0.538, that of ImageNet pixels in [-1, 1] (DALL-E 2's scheme),
per layer by default (``per_layer=False``: one scale for the whole vector). The scale has no shift,
so it commutes with permutation augmentation. ``MetricNormalizer`` maps a metric to [0, 1] over
the range seen in the training split, for the frequency embedding of the scalar tokens.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from common.training import step_seed
from gpt_checkpoints.dataset.store import CheckpointStore, RunData
from gpt_checkpoints.params.layout import ParamLayout

log = logging.getLogger(__name__)

IMAGENET_STD = 0.538  # std of ImageNet pixels scaled to [-1, 1] (Sec. 3.3)


class ParameterNormalizer:
    """Per-layer multiplicative scales (one per entry of the layout)."""

    def __init__(self, layout: ParamLayout, layer_scales: Sequence[float]) -> None:
        if len(layer_scales) != len(layout.entries):
            raise ValueError(
                f"{len(layer_scales)} normalisation scales for {len(layout.entries)} tensors"
            )
        self.layer_scales = [float(s) for s in layer_scales]
        self.scale = torch.cat(
            [torch.full((n,), s) for n, s in zip(layout.sizes, self.layer_scales, strict=True)]
        )

    @classmethod
    def fit(
        cls, params: torch.Tensor, layout: ParamLayout, per_layer: bool = True
    ) -> ParameterNormalizer:
        """Scales from checkpoints ``params [..., P]`` (the training split)."""
        flat = params.reshape(-1, layout.num_params).float()
        if not per_layer:
            return cls(layout, [IMAGENET_STD / flat.std().item()] * len(layout.entries))
        scales = []
        for name, sl in layout.offsets().items():
            std = flat[:, sl].std().item()
            if not std > 0:
                raise ValueError(
                    f"parameter {name} is constant in the dataset; cannot normalise it"
                )
            scales.append(IMAGENET_STD / std)
        return cls(layout, scales)

    def normalize(self, theta: torch.Tensor) -> torch.Tensor:
        return theta * self.scale.to(theta.device, theta.dtype)

    def denormalize(self, theta: torch.Tensor) -> torch.Tensor:
        return theta / self.scale.to(theta.device, theta.dtype)


class MetricNormalizer:
    """Metric -> the scalar G.pt sees: ``(l - low) / (high - low)`` over the training range
    (``encoding="range"``, this project's models) or the raw value (``"raw"``: the released
    models embed raw losses, errors in percent and returns). ``low``/``high`` bound the prompts
    either way."""

    def __init__(
        self, low: float, high: float, name: str = "metric", encoding: str = "range"
    ) -> None:
        if not high > low:
            raise ValueError(f"metric {name} has no spread in the dataset ({low}..{high})")
        if encoding not in ("range", "raw"):
            raise ValueError(f"metric encoding {encoding!r}; choose range or raw")
        self.low, self.high, self.name, self.encoding = float(low), float(high), name, encoding

    def normalize(self, value: torch.Tensor) -> torch.Tensor:
        if self.encoding == "raw":
            return value
        return (value - self.low) / (self.high - self.low)

    def check_prompt(self, value: float | Sequence[float] | torch.Tensor) -> None:
        """Warn when a prompt leaves the range of the training data (Sec. 3.4.2: G.pt shows
        limited ability to extrapolate beyond it)."""
        v = torch.as_tensor(value, dtype=torch.float32)
        span = self.high - self.low
        if (v < self.low - 0.02 * span).any() or (v > self.high + 0.02 * span).any():
            warnings.warn(
                f"prompted {self.name} {v.tolist()} lies outside the range seen in training "
                f"[{self.low:.4g}, {self.high:.4g}]; G.pt does not extrapolate well beyond it "
                "(Sec. 3.4.2): prompt inside that range, e.g. near its best end",
                stacklevel=2,
            )


def split_runs(
    num_runs: int, test_fraction: float, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of training and test runs: a seeded random split by run."""
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    order = torch.randperm(num_runs, generator=torch.Generator().manual_seed(seed))
    n_test = int(round(num_runs * test_fraction))
    if num_runs - n_test < 1:
        raise ValueError(
            f"{num_runs} runs leave none for training at test_fraction={test_fraction}"
        )
    return order[n_test:].sort().values, order[:n_test].sort().values


class CheckpointPairs(Dataset):
    """Endless batches of ``(theta, theta*, l, l*)``; item ``b`` is batch number ``b``."""

    def __init__(
        self,
        runs: RunData,
        metric: str,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        initial_fraction: float = 0.0,
    ):
        if metric not in runs.metrics:
            raise ValueError(
                f"the checkpoint dataset has no metric {metric!r}; it has {sorted(runs.metrics)}"
            )
        if runs.params.shape[1] < 2:
            raise ValueError("pairs need at least two checkpoints per run")
        self.params = runs.params
        self.metric = runs.metrics[metric]
        self.batch_size, self.seed, self.rank = batch_size, seed, rank
        if not 0.0 <= initial_fraction <= 1.0:
            raise ValueError(f"initial_fraction must be in [0, 1], got {initial_fraction}")
        self.initial_fraction = initial_fraction

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, b: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(step_seed(self.seed, int(b), self.rank))
        n_runs, n_ckpt = self.params.shape[:2]
        run = torch.randint(n_runs, (self.batch_size,), generator=g)
        a = torch.randint(n_ckpt, (self.batch_size,), generator=g)
        c = torch.randint(n_ckpt - 1, (self.batch_size,), generator=g)
        c = c + (c >= a).long()  # a != c, uniform over ordered pairs
        i, j = torch.minimum(a, c), torch.maximum(a, c)
        if self.initial_fraction > 0:  # theta = the run's initialisation, theta* any later one
            from_init = torch.rand(self.batch_size, generator=g) < self.initial_fraction
            later = torch.randint(1, n_ckpt, (self.batch_size,), generator=g)
            i = torch.where(from_init, torch.zeros_like(i), i)
            j = torch.where(from_init, later, j)
        return {
            "theta": self.params[run, i],
            "theta_star": self.params[run, j],
            "loss": self.metric[run, i],
            "loss_target": self.metric[run, j],
        }


class _Offset(torch.utils.data.Sampler):
    def __init__(self, start: int) -> None:
        self.start = start

    def __iter__(self):
        b = self.start
        while True:
            yield b
            b += 1


class CheckpointDataModule(L.LightningDataModule):
    """Loads a collected dataset (``dataset.store``), splits it by run, serves pairs."""

    def __init__(
        self,
        root: str,
        metric: str,
        batch_size: int = 256,
        test_fraction: float = 0.1,
        seed: int = 0,
        max_runs: int | None = None,
        initial_fraction: float = 0.0,
    ) -> None:
        super().__init__()
        self.root, self.metric = root, metric
        self.batch_size, self.test_fraction, self.seed = batch_size, test_fraction, seed
        self.max_runs = max_runs
        self.initial_fraction = initial_fraction
        self.store = CheckpointStore(root)
        self.manifest = self.store.manifest()
        self.layout = ParamLayout.from_list(self.manifest["layout"])
        if metric not in self.manifest["metrics"]:
            raise ValueError(
                f"metric {metric!r} is not recorded in {root}; it has {self.manifest['metrics']} "
                "(choose metric=... accordingly)"
            )
        seeds = self.store.seeds()[: max_runs or None]
        runs = self.store.load(seeds)
        train_idx, test_idx = split_runs(len(seeds), test_fraction, seed)
        self.train_runs, self.test_runs = runs.select(train_idx), runs.select(test_idx)
        log.info("%d training runs, %d test runs from %s", len(train_idx), len(test_idx), root)

    @property
    def permutation_groups(self) -> list:
        return [
            [int(size), [[n, int(a)] for n, a in members]]
            for size, members in self.manifest.get("permutation_groups", [])
        ]

    def normalizer(self, per_layer: bool = True) -> ParameterNormalizer:
        return ParameterNormalizer.fit(self.train_runs.params, self.layout, per_layer)

    def metric_range(self) -> tuple[float, float]:
        m = self.train_runs.metrics[self.metric]
        return float(m.min()), float(m.max())

    def train_dataloader(self) -> DataLoader:
        start, rank = 0, 0
        if self.trainer is not None:
            start = self.trainer.global_step * self.trainer.accumulate_grad_batches
            rank = self.trainer.global_rank
        pairs = CheckpointPairs(
            self.train_runs, self.metric, self.batch_size, self.seed, rank, self.initial_fraction
        )
        return DataLoader(pairs, batch_size=None, sampler=_Offset(start))

    def val_dataloader(self) -> DataLoader:
        runs = self.test_runs if len(self.test_runs.seeds) else self.train_runs
        pairs = CheckpointPairs(runs, self.metric, self.batch_size, self.seed + 1)
        return DataLoader(pairs, batch_size=None, sampler=range(4))
