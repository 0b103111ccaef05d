"""Pairs from the same run, the split by run, the 0.538 normalisation and prompt-range warnings."""

from __future__ import annotations

import pytest
import torch

from gpt_checkpoints.dataset.datamodule import (
    IMAGENET_STD,
    CheckpointPairs,
    MetricNormalizer,
    ParameterNormalizer,
    split_runs,
)
from gpt_checkpoints.dataset.store import RunData
from gpt_checkpoints.params.layout import ParamLayout


def _runs(n_runs=6, n_ckpt=5, p=7) -> RunData:
    params = (
        torch.arange(n_runs * n_ckpt, dtype=torch.float32).view(n_runs, n_ckpt, 1).expand(-1, -1, p)
    )
    metric = torch.arange(n_runs * n_ckpt, dtype=torch.float32).view(n_runs, n_ckpt)
    return RunData(
        params.clone(),
        torch.arange(n_ckpt).expand(n_runs, -1),
        {"test_loss": metric},
        torch.arange(n_runs),
    )


def test_pairs_come_from_one_run_with_theta_earlier():
    pairs = CheckpointPairs(_runs(), "test_loss", batch_size=512, seed=0)
    b = pairs[3]
    ids, ids_star = b["theta"][:, 0].long(), b["theta_star"][:, 0].long()
    assert torch.equal(ids // 5, ids_star // 5)  # same run
    assert (ids % 5 < ids_star % 5).all()  # theta strictly earlier
    assert torch.equal(b["loss"], b["theta"][:, 0]) and torch.equal(
        b["loss_target"], b["theta_star"][:, 0]
    )
    # every ordered pair of the 5 checkpoints occurs (any distance, initial and final included)
    assert len(set(zip((ids % 5).tolist(), (ids_star % 5).tolist(), strict=True))) == 10
    assert torch.equal(pairs[3]["theta"], b["theta"])  # batch b is a pure function of (seed, b)


def test_split_is_by_run_and_disjoint():
    train, test = split_runs(50, 0.2, seed=0)
    assert len(test) == 10 and len(train) == 40
    assert not set(train.tolist()) & set(test.tolist())
    with pytest.raises(ValueError, match="test_fraction"):
        split_runs(10, 1.0)


def test_normalisation_matches_imagenet_std_per_layer():
    layout = ParamLayout((("w", (4, 3)), ("b", (4,))))
    params = torch.cat([torch.randn(1000, 12) * 0.3, torch.randn(1000, 4) * 0.01], 1)
    norm = ParameterNormalizer.fit(params, layout)
    z = norm.normalize(params)
    assert z[:, :12].std().item() == pytest.approx(IMAGENET_STD, rel=1e-4)
    assert z[:, 12:].std().item() == pytest.approx(IMAGENET_STD, rel=1e-4)
    torch.testing.assert_close(norm.denormalize(z), params)
    glob = ParameterNormalizer.fit(params, layout, per_layer=False)
    assert glob.normalize(params).std().item() == pytest.approx(IMAGENET_STD, rel=1e-4)


def test_prompt_outside_training_range_warns():
    m = MetricNormalizer(0.1, 2.3, "test_loss")
    with pytest.warns(UserWarning, match=r"outside the range seen in training \[0.1, 2.3\]"):
        m.check_prompt(0.01)
    m.check_prompt(0.2)  # inside: silent
    with pytest.raises(ValueError, match="no spread"):
        MetricNormalizer(1.0, 1.0)


def test_initial_fraction_starts_pairs_at_the_initial_checkpoint():
    pairs = CheckpointPairs(_runs(), "test_loss", batch_size=4000, seed=0, initial_fraction=0.5)
    b = pairs[0]
    ids, ids_star = b["theta"][:, 0].long(), b["theta_star"][:, 0].long()
    assert torch.equal(ids // 5, ids_star // 5) and (ids % 5 < ids_star % 5).all()
    from_init = (ids % 5 == 0).float().mean().item()
    assert 0.5 + 0.5 * 2 / 5 - 0.03 < from_init < 0.5 + 0.5 * 2 / 5 + 0.03  # forced + uniform share
    with pytest.raises(ValueError, match="initial_fraction"):
        CheckpointPairs(_runs(), "test_loss", batch_size=4, initial_fraction=1.5)
