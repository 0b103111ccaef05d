"""Cluster classifier for K-mode GANgealing on real images (thesis Sec. 4.3.2)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from common.checkpoint import atomic_save, plain_container, safe_load
from gangealing.align.classifier import ClusterClassifier
from gangealing.align.congealer import Congealer
from gangealing.stylegan2.networks import Generator, save_generator
from gangealing.training.cluster_classifier import load_run, train_cluster_classifier
from gangealing.training.module import GangealingModule
from tests.gangealing.test_gangealing import TINY_G, tiny_module


def _run(tmp_path, num_modes: int = 2):
    torch.manual_seed(0)
    save_generator(tmp_path / "g.pt", Generator(**TINY_G))
    module = tiny_module(tmp_path / "g.pt", f"num_modes={num_modes}")
    module.on_fit_start()
    with torch.no_grad():  # distinct transformers, so routing is visible
        for k, stn in enumerate(module.stn_ema.module):
            stn.similarity.head[-1].bias.copy_(torch.tensor([0.3 * k, 0.0, 0.1 * k, 0.0]))
    return save_run(module, tmp_path / "run"), module


def save_run(module: GangealingModule, run: Path) -> Path:
    """A run folder as ``gangealing.train`` leaves it: ``checkpoints/last.ckpt`` (what
    ``load_run`` reads) and ``congealer.pt``."""
    ckpt = {
        "hyper_parameters": plain_container(dict(module.hparams)),
        "state_dict": module.state_dict(),
        "generator_fingerprint": module.fingerprint,
    }
    atomic_save(ckpt, run / "checkpoints" / "last.ckpt")
    atomic_save(module.export(), run / "congealer.pt")
    return run


def test_classifier_starts_from_the_transformer_trunk_and_routes_real_images(tmp_path, run_main):
    run, module = _run(tmp_path)
    restored = load_run(run)
    torch.testing.assert_close(restored.target.modes(), module.target.modes())
    fresh, _ = train_cluster_classifier(restored, 0, 32, 1e-3, "stop")
    trunk = restored.stn_ema.module[0].similarity.trunk.state_dict()
    for name, value in fresh.trunk.state_dict().items():
        torch.testing.assert_close(value, trunk[name])
    _, out, _ = run_main(
        "gangealing.cluster_classifier", f"ckpt={run}", "max_steps=5", "batch_size=8",
        "device=cpu",
    )  # fmt: skip
    assert "accuracy on generated images" in out
    record = safe_load(run / "congealer.pt")["classifier"]
    assert record["widths"] == [8, 8]

    congealer = Congealer.load(run)
    assert isinstance(congealer.classifier, ClusterClassifier)
    images = torch.rand(6, 3, 16, 16) * 2 - 1
    clusters = congealer.classify(images)
    routed = congealer(images)  # no cluster=: the classifier assigns one per image
    for k in clusters.unique().tolist():
        manual = congealer(images[clusters == k], cluster=k)
        torch.testing.assert_close(routed.image[clusters == k], manual.image)
        torch.testing.assert_close(routed.grid[clusters == k], manual.grid)


def test_single_mode_runs_have_nothing_to_classify(tmp_path, cli_main):
    run, _ = _run(tmp_path, num_modes=1)
    code, err = cli_main("gangealing.cluster_classifier", f"ckpt={run}", "max_steps=1")
    assert code == 2 and "num_modes=1" in err
    with pytest.raises(FileNotFoundError, match="ckpt=<run dir"):
        load_run(tmp_path / "nowhere")


def test_a_device_the_machine_lacks_is_one_line(tmp_path, cli_main):
    """``device=auto|cpu|cuda[:N]`` as in every command computing outside the Trainer."""
    run, _ = _run(tmp_path)
    code, err = cli_main("gangealing.cluster_classifier", f"ckpt={run}", "device=gpu0")
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: device='gpu0'")


def test_nan_gradients_stop_the_classifier_or_are_skipped(tmp_path, cli_main):
    """A diverging learning rate stops the loop with the step (nan_policy stop, the CLI's one
    line and exit code 2, congealer.pt untouched) or skips the bad steps (skip)."""
    from common.checkpoint import find_non_finite
    from common.errors import NonFiniteError

    run, _ = _run(tmp_path)
    module = load_run(run)
    with pytest.raises(NonFiniteError, match=r"non-finite gradients at classifier step \d+"):
        train_cluster_classifier(module, 10, 4, 1e10, "stop")
    classifier, _ = train_cluster_classifier(module, 10, 4, 1e10, "skip")
    assert find_non_finite(classifier.state_dict()) is None
    before = (run / "congealer.pt").read_bytes()
    code, err = cli_main(
        "gangealing.cluster_classifier", f"ckpt={run}", "optim.lr=1e10", "max_steps=10"
    )
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: non-finite gradients")
    assert (run / "congealer.pt").read_bytes() == before
