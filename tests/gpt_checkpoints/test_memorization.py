"""Memorisation baselines and novelty (Zeng et al. 2025): alignment, misprediction IoU and the
baselines of ``memorization.novelty_baselines``, on real digits-MLP runs trained by the test."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from gpt_checkpoints.analysis.memorization import (
    align,
    misprediction_iou,
    mispredictions,
    nearest_prompted,
    novelty,
    novelty_baselines,
)
from gpt_checkpoints.dataset.datamodule import ParameterNormalizer
from gpt_checkpoints.dataset.store import RunData
from gpt_checkpoints.model.module import GptModule
from gpt_checkpoints.params.permutation import apply_permutations, random_permutations
from gpt_checkpoints.tasks import build_task


@pytest.fixture(scope="module")
def task():
    return build_task("mlp_digits", epochs=1)


@pytest.fixture(scope="module")
def runs(task) -> RunData:
    """8 digits-MLP runs of one epoch, checkpoints at iterations 0, 11 and 22."""
    seeds = list(range(8))
    theta0 = torch.cat([task.init(1, torch.Generator().manual_seed(s)) for s in seeds])
    kept = {0: [], 11: [], task.iterations: []}
    task.train_runs(theta0, seeds, lambda i, th: kept[i].append(th.clone()) if i in kept else None)
    params = torch.stack([kept[i][0] for i in sorted(kept)], 1)  # [R, 3, P]
    metrics = {k: v.view(8, 3) for k, v in task.evaluate(params.flatten(0, 1)).items()}
    iteration = torch.tensor(sorted(kept)).expand(8, 3)
    return RunData(params, iteration, metrics, torch.tensor(seeds))


def _permuted(task, theta: torch.Tensor, seed: int = 0) -> torch.Tensor:
    groups = task.permutation_groups
    perms = random_permutations(groups, theta.shape[0], torch.Generator().manual_seed(seed))
    return apply_permutations(theta, task.layout, groups, perms)


@pytest.mark.parametrize("name", ["mlp_digits", "cnn_digits"])
def test_alignment_undoes_a_permutation_exactly(name):
    """A hidden-unit permutation of a network aligns back onto it (distance 0), for one group
    (MLP) and for two coupled groups (CNN: coordinate descent over both)."""
    task = build_task(name)
    a = task.init(1, torch.Generator().manual_seed(3))
    b = _permuted(task, a, seed=4)
    assert (a - b).norm() > 1.0
    aligned = align(a[0], b[0], task.layout, task.permutation_groups)
    torch.testing.assert_close(aligned, a[0], rtol=0, atol=0)


def test_alignment_keeps_the_function(task, runs):
    """Aligning run 1 onto run 0 only permutes units: outputs unchanged, distance not larger."""
    a, b = runs.params[0, -1], runs.params[1, -1]
    aligned = align(a, b, task.layout, task.permutation_groups)
    x = task.data.x_test[:32]
    torch.testing.assert_close(task.forward(aligned[None], x), task.forward(b[None], x))
    assert (a - aligned).norm() <= (a - b).norm() + 1e-6


def test_misprediction_iou_by_hand():
    wrong = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    ref = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 0, 0]], dtype=torch.bool)
    expected = torch.tensor([[1 / 3, 0.0, 1.0], [0.0, 1.0, 0.0]])
    torch.testing.assert_close(misprediction_iou(wrong, ref), expected)


def test_a_training_checkpoint_and_its_permuted_copy_are_not_novel(task, runs):
    """Novelty is blind to permutations: a permuted copy of a member of R has IoU 1 and aligned
    distance 0, while another run's final checkpoint is new on both counts."""
    reference = runs.params[:6, -1]
    normalizer = ParameterNormalizer.fit(runs.params, task.layout)
    copy = _permuted(task, reference[2:3], seed=1)
    other = runs.params[7:8, -1]
    nov = novelty(
        task,
        torch.cat([copy, other]),
        reference,
        normalizer.normalize,
        mispredictions(task, reference),
    )
    assert nov["similarity"][0] == 1.0 and nov["distance"][0] < 1e-4
    assert nov["similarity"][1] < 1.0 and nov["distance"][1] > 1.0


def test_nearest_prompted_takes_one_checkpoint_per_run_closest_to_the_prompt(runs):
    prompt = float(runs.metrics["test_loss"][:, -1].median())
    picked = nearest_prompted(runs, "test_loss", prompt, 3)
    gaps = (runs.metrics["test_loss"] - prompt).abs()
    assert len(set(picked[:, 0].tolist())) == 3
    chosen = gaps[picked[:, 0], picked[:, 1]]
    others = gaps.min(1).values[[r for r in range(8) if r not in picked[:, 0].tolist()]]
    assert chosen.max() <= others.min()


def test_novelty_baselines_on_a_fresh_gpt(task, runs):
    """Every method is measured on the same footing; the noise baselines move away from the
    training set as the noise grows, and their mean metric gets worse."""
    train, test = runs.select(torch.arange(6)), runs.select(torch.arange(6, 8))
    normalizer = ParameterNormalizer.fit(train.params, task.layout)
    best = float(train.metrics["test_loss"].min())
    with initialize_config_module("gpt_checkpoints.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=["model=tiny"])
    module = GptModule(
        model=OmegaConf.to_container(cfg.model),
        layout=task.layout.to_list(),
        permutation_groups=[list(g) for g in task.permutation_groups],
        task={"name": "mlp_digits", "recipe": task.config()},
        metric="test_loss",
        metric_range=[
            float(train.metrics["test_loss"].min()),
            float(train.metrics["test_loss"].max()),
        ],
        layer_scales=normalizer.layer_scales,
        diffusion=OmegaConf.to_container(cfg.diffusion),
        optim=None,
        ema_decay=cfg.ema_decay,
        augment=cfg.augment,
        seed=cfg.seed,
    )
    res = novelty_baselines(
        module, task, train, test, prompt=best, num_nets=2, noise_levels=(0.01, 0.5),
        sampler="ddim", steps=2,
    )  # fmt: skip
    methods = res["methods"]
    assert list(methods) == [
        "gpt", "nearest_prompted", "noise_0.01", "noise_0.5", "interpolation", "independent_runs",
    ]  # fmt: skip
    for row in methods.values():
        assert len(row["test_loss"]) == len(row["similarity"]) == len(row["distance"]) == 2
    assert methods["noise_0.01"]["mean"]["distance"] < methods["noise_0.5"]["mean"]["distance"]
    assert methods["noise_0.01"]["mean"]["test_loss"] < methods["noise_0.5"]["mean"]["test_loss"]
    # a fresh G.pt returns its input (zero-initialised decoders): an unseen initialisation
    torch.testing.assert_close(
        torch.tensor(methods["gpt"]["test_loss"]),
        test.metrics["test_loss"][:, 0],
        atol=1e-4,
        rtol=0,
    )
    # the nearest-prompted checkpoints that are final checkpoints are members of R
    picked = nearest_prompted(train, "test_loss", best, 2)
    for i, (_, c) in enumerate(picked.tolist()):
        if c == 2:
            assert methods["nearest_prompted"]["distance"][i] < 1e-4


def test_novelty_needs_held_out_runs(task, runs):
    empty = runs.select(torch.arange(0))
    with pytest.raises(ValueError, match="needs held-out test runs"):
        novelty_baselines(None, task, runs, empty, prompt=0.5)
