"""``transform=paper``: GANgealing trained with the released Spatial Transformer (thesis Sec.
4.3.1; official ``ComposedSTN`` with K heads on one trunk, ``gangealing_cluster_loss``).

The architecture itself is checked against the official code in ``test_official_stn.py``; these
tests check how training uses it: K heads of one pass are the K candidates of Eq. 4.6, the pair
resizing is the official ``resize_fake2stn``, ``sample_from_full_res`` equals the test-time path,
and a trained model exports to a congealer that every application loads.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch

from common.checkpoint import safe_load
from gangealing.align.congealer import Congealer
from gangealing.align.official_stn import OfficialClusterClassifier, OfficialComposedSTN
from gangealing.align.released import infer_architecture
from gangealing.align.sampling import BilinearDownsample
from gangealing.stylegan2.networks import Generator, save_generator
from gangealing.training.cluster_classifier import load_run, train_cluster_classifier
from gangealing.training.module import GangealingModule
from tests.gangealing.test_cluster_classifier import save_run
from tests.gangealing.test_gangealing import train_config, train_module

G128 = {
    "size": 128,
    "style_dim": 16,
    "n_mlp": 2,
    "channels": {4: 16, 8: 16, 16: 8, 32: 8, 64: 4, 128: 4},
}
PAPER_TINY = [  # the default model=stn/paper, narrow
    "resolution=64",
    "model.supersize=128",
    "model.channel_multiplier=0.125",
    "model.max_channels=8",
    "cutoff=3",
    "pca_samples=512",
    "loss.name=pyramid_l1",
    "psi_anneal_steps=2",
    "batch_size=3",
]


@pytest.fixture
def generator_path(tmp_path):
    torch.manual_seed(0)
    save_generator(tmp_path / "g128.pt", Generator(**G128))
    return tmp_path / "g128.pt"


def paper_module(generator_path, *overrides: str) -> GangealingModule:
    return train_module(generator_path, *PAPER_TINY, *overrides)


def _module(generator_path, *overrides: str) -> GangealingModule:
    module = paper_module(generator_path, *overrides)
    module.on_fit_start()
    return module


def _randomise(stn: torch.nn.Module, seed: int = 1) -> None:
    """Every parameter (the zero-initialised heads included) away from the identity warp."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in stn.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


def test_paper_is_the_default_and_builds_the_released_architecture(generator_path):
    cfg = train_config(generator_path)
    assert cfg.model._target_ == "gangealing.align.official_stn.OfficialComposedSTN"
    assert (cfg.model.channel_multiplier, cfg.model.flow_downsample) == (0.5, 8)  # get_stn
    # flow_size 128 (official default); real_size: the generator's size unless set
    assert (cfg.model.flow_size, cfg.model.supersize) == (128, None)
    module = paper_module(generator_path, "model.supersize=null")
    assert isinstance(module.stns, OfficialComposedSTN) and module.stns.num_heads == 1
    # flow_size = resolution; supersize: the test-time input (official real_size = gen_size)
    assert (module.stns.flow_size, module.stns.supersize) == (64, 128)
    arch = infer_architecture(module.stns.state_dict())
    assert arch == {
        "transforms": ["similarity", "flow"], "flow_size": 64, "supersize": 128,
        "channel_multiplier": 0.125, "num_heads": 1, "flow_downsample": 8, "max_channels": 8,
    }  # fmt: skip
    # pairs are shrunk by the official tent filter (resize_fake2stn), not by F.interpolate
    assert isinstance(module.pair_resize, BilinearDownsample)


def test_the_k_heads_of_one_pass_are_the_k_candidates_and_start_at_the_identity(generator_path):
    module = _module(generator_path, "num_modes=3")
    x, y = module.pairs(2, psi=0.5)
    assert x.shape == (2, 3, 64, 64) and y.shape == (2, 3, 3, 64, 64)
    outs = module.warp_modes(module.stns, x)
    assert len(outs) == 3
    for out in outs:  # zero-initialised heads: the identity warp, a zero residual flow
        assert out.image.shape == (2, 3, 64, 64) and out.flow.shape == (2, 64, 64, 2)
        assert float(out.flow.detach().abs().max()) == 0.0
        torch.testing.assert_close(out.image, x, atol=1e-5, rtol=0)
    _randomise(module.stns)
    outs = module.warp_modes(module.stns, x)  # one trunk, K different warps
    assert not torch.allclose(outs[0].image, outs[1].image)
    assert not torch.allclose(outs[1].flow, outs[2].flow)


def test_sampling_from_full_resolution_is_the_test_time_warp(generator_path):
    """Official ``sample_from_full_res``: regress from the shrunk pair, warp the full-size one,
    which is exactly what congealing a 128 px image does (``congeal``, head k)."""
    module = _module(generator_path, "num_modes=2", "sample_from_full_res=true")
    _randomise(module.stns)
    x, y, full = module.pairs(2, psi=0.0, with_source=True)
    assert full.shape == (2, 3, 128, 128)
    torch.testing.assert_close(x, BilinearDownsample(2, 3)(full))
    outs = module.warp_modes(module.stns, x, full)
    for k, out in enumerate(outs):
        ref = module.stns.congeal(full, cluster=k, padding_mode="reflection")
        torch.testing.assert_close(out.image, ref.image, atol=1e-5, rtol=0)
        torch.testing.assert_close(out.grid, ref.grid, atol=1e-6, rtol=0)
    losses = module.alignment_losses(module.stns, x, y, full)
    assert torch.isfinite(losses["loss"]) and set(losses["assignment"].tolist()) <= {0, 1}


def test_flip_candidates_index_the_mirror_as_k_plus_cluster(generator_path):
    module = _module(generator_path, "num_modes=2", "flips=true")
    _randomise(module.stns)
    x, y = module.pairs(4, psi=0.0)
    out = module.alignment_losses(module.stns, x, y)
    assert out["assignment"].max() < 4
    mirrored = module.alignment_losses(module.stns, x.flip(-1), y)
    # the mirror of a mirror is the input: candidates swap halves (k <-> k + K)
    torch.testing.assert_close(out["distance"], mirrored["distance"])
    assert torch.equal(mirrored["assignment"], (out["assignment"] + 2) % 4)


def _train_and_save(tmp_path, generator_path, *overrides: str) -> tuple:
    module = paper_module(generator_path, *overrides)
    trainer = L.Trainer(
        max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    before = {k: v.clone() for k, v in module.stns.state_dict().items()}
    trainer.fit(module)
    changed = [k for k, v in module.stns.state_dict().items() if not torch.equal(v, before[k])]
    assert any("warp_head" in k for k in changed)  # the zero-initialised heads learn
    return module, save_run(module, tmp_path / "run")


def test_a_trained_paper_model_exports_to_a_congealer_with_the_official_warps(
    tmp_path, generator_path
):
    module, run = _train_and_save(tmp_path, generator_path, "flips=true")
    blob = safe_load(run / "congealer.pt")
    assert blob["config"]["model"]["_target_"].endswith("OfficialComposedSTN")
    assert blob["config"]["flips"] is True
    assert set(blob["stn"]) == set(module.stn_ema.module.state_dict())  # official t_ema keys
    congealer = Congealer.load(run)
    assert isinstance(congealer.stn, OfficialComposedSTN)
    assert congealer.settings == {"padding_mode": "reflection", "iters": 1, "flips": True}
    images = torch.rand(3, 3, 128, 128) * 2 - 1
    out = congealer(images)
    ref = module.stn_ema.module.congeal(images, flips=True, padding_mode="reflection", cluster=0)
    torch.testing.assert_close(out.image, ref.image)
    torch.testing.assert_close(out.grid, ref.grid)
    assert torch.equal(out.flipped, ref.flipped)
    plain = congealer(images, flips=False)
    assert not plain.flipped.any()


def test_paper_cluster_classifier_is_the_flip_aware_official_one(
    tmp_path, generator_path, run_main
):
    """Official ``train_cluster_classifier.py``: 2K logits (cluster x mirror), initialised from
    the similarity stage's trunk; stored in ``congealer.pt`` and used to route real images."""
    _, run = _train_and_save(tmp_path, generator_path, "num_modes=2", "flips=true")
    restored = load_run(run)
    fresh, _ = train_cluster_classifier(restored, 0, 2, 1e-3, "stop")
    assert isinstance(fresh, OfficialClusterClassifier) and fresh.num_clusters == 2
    similarity = restored.stn_ema.module.stns[0].state_dict()
    for name, value in fresh.state_dict().items():
        if name.startswith(("convs.", "final_conv.")):
            torch.testing.assert_close(value, similarity[name])
    _, out, _ = run_main(
        "gangealing.cluster_classifier", f"ckpt={run}", "max_steps=2", "batch_size=2"
    )
    assert "accuracy on generated images" in out
    record = safe_load(run / "congealer.pt")["classifier"]
    assert record["kind"] == "official"
    congealer = Congealer.load(run)
    assert isinstance(congealer.classifier, OfficialClusterClassifier)
    images = torch.rand(4, 3, 128, 128) * 2 - 1
    clusters, mirrored = congealer.classifier.assign(images)
    out = congealer(images)  # routed by the classifier: cluster and mirror per image
    assert torch.equal(out.flipped, mirrored)
    for k in clusters.unique().tolist():
        pick = clusters == k
        manual = congealer(images[pick], cluster=k)
        torch.testing.assert_close(out.image[pick], manual.image)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("resolution=32", "flow_size=32 does not fit a flow STN; pass a power of two from 64"),
        ("resolution=96", "model=stn/small takes smaller sizes"),
        ("model.supersize=100", "supersize=100 .the test-time input size. must be a multiple"),
    ],
)
def test_sizes_the_released_stn_cannot_take_are_refused(generator_path, override, message):
    with pytest.raises(ValueError, match=message):
        paper_module(generator_path, override)
