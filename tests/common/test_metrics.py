"""common.metrics: Fréchet distance, precision/recall, IS, the digits space, Inception wiring."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import common.metrics.digits as digits_mod
import common.metrics.evaluate as evaluate_mod
from common.data.digits import load_digits
from common.metrics import (
    INCEPTION_WEIGHTS_FILE,
    DigitsFeatureSpace,
    FeatureStats,
    available_metrics,
    evaluate_images,
    frechet_distance,
    inception_score,
    load_images,
    precision_recall,
    reference_stats,
)
from common.metrics.digits import digits_split, to_digits_input


# ----------------------------------------------------------------------------- Fréchet distance
@pytest.mark.parametrize("method", ["sqrtm", "eigh"])
def test_frechet_distance_closed_form_on_diagonal_gaussians(method):
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.5, 2.0, 16), rng.uniform(0.5, 2.0, 16)
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    # commuting covariances: Tr(S1 + S2 - 2 (S1 S2)^1/2) = sum (sqrt a - sqrt b)^2
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(mu1, np.diag(a), mu2, np.diag(b), method=method)
    assert got == pytest.approx(expected, rel=1e-10)
    x = rng.normal(size=(200, 16))
    s = FeatureStats.from_features(x)
    assert abs(frechet_distance(s.mu, s.sigma, s.mu, s.sigma, method=method)) < 1e-9


def test_frechet_methods_agree_on_full_and_rank_deficient_covariances():
    rng = np.random.default_rng(1)
    for n in (500, 20):  # 20 points in 64-d: singular covariances, as with few images
        s1 = FeatureStats.from_features(rng.normal(size=(n, 64)))
        s2 = FeatureStats.from_features(rng.normal(1.0, 2.0, size=(n, 64)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = frechet_distance(s1.mu, s1.sigma, s2.mu, s2.sigma, method="sqrtm")
        fast = frechet_distance(s1.mu, s1.sigma, s2.mu, s2.sigma, method="eigh")
        assert fast == pytest.approx(ref, rel=1e-6)
    with pytest.raises(ValueError, match="different lengths"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_feature_stats_npz_round_trip_and_stats_only_files(tmp_path):
    feats = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    stats = FeatureStats.from_features(feats, keep_features=True)
    loaded = FeatureStats.load(stats.save(tmp_path / "s.npz"))
    np.testing.assert_array_equal(loaded.mu, stats.mu)
    np.testing.assert_array_equal(loaded.sigma, stats.sigma)
    np.testing.assert_array_equal(loaded.features, feats)
    assert set(np.load(tmp_path / "s.npz").files) == {"mu", "sigma", "features"}
    # ADM reference batch / pytorch-fid layout: only mu and sigma (and ADM's mu_s/sigma_s)
    np.savez(
        tmp_path / "ref.npz", mu=stats.mu, sigma=stats.sigma, mu_s=np.zeros(2), sigma_s=np.eye(2)
    )
    only = FeatureStats.load(tmp_path / "ref.npz")
    assert only.features is None and only.dim == 8
    assert FeatureStats.load(tmp_path / "ref.npz", suffix="_s").dim == 2


# ----------------------------------------------------------------------------- precision/recall
def test_precision_recall_same_disjoint_and_one_mode():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(2000, 8, generator=g)
    same = torch.randn(2000, 8, generator=g)
    p, r = precision_recall(real, same, chunk_size=700)
    assert p > 0.8 and r > 0.8
    p, r = precision_recall(real, same + 100.0)
    assert p == 0.0 and r == 0.0
    shift = torch.zeros(8)
    shift[0] = 20.0
    two_modes = torch.cat(
        [torch.randn(1000, 8, generator=g), torch.randn(1000, 8, generator=g) + shift]
    )
    one_mode = torch.randn(2000, 8, generator=g)
    p, r = precision_recall(two_modes, one_mode)
    assert p > 0.8 and 0.4 < r < 0.6


def test_chunked_precision_recall_equals_torch_fidelity():
    from torch_fidelity.metric_prc import calculate_precision_recall_full

    g = torch.Generator().manual_seed(1)
    real, fake = torch.randn(300, 5, generator=g), torch.randn(250, 5, generator=g) * 1.3
    ours = precision_recall(real, fake, k=3, chunk_size=64)
    theirs = calculate_precision_recall_full(fake, real, neighborhood=3, batch_size=10000)
    assert ours == pytest.approx(theirs, abs=1e-12)


def test_inception_score_formula_and_limits():
    confident = torch.eye(10).repeat(20, 1) * 50.0  # every class equally often, each certain
    assert inception_score(confident, splits=1) == pytest.approx(10.0, rel=1e-6)
    assert inception_score(torch.zeros(40, 10), splits=4) == pytest.approx(1.0)
    logits = torch.randn(64, 7, generator=torch.Generator().manual_seed(0)) * 3
    p = logits.double().softmax(1)
    kl = (p * (p.log() - p.mean(0, keepdim=True).log())).sum(1).mean()  # Salimans et al. 2016
    assert inception_score(logits, splits=1) == pytest.approx(kl.exp().item(), rel=1e-9)


# ----------------------------------------------------------------------------- digits space
@pytest.fixture(scope="module")
def digits_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    DigitsFeatureSpace.load(cache)
    return cache


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits()
    return x, y


def test_digits_classifier_accuracy_and_cache_reuse(digits_cache, digits, monkeypatch):
    space = DigitsFeatureSpace.load(digits_cache)
    x, y = digits
    _, test = digits_split(len(x))
    with torch.no_grad():
        acc = (space.model(x[test]).argmax(1) == y[test]).float().mean().item()
    assert acc > 0.95 and acc == pytest.approx(space.test_accuracy)
    path = digits_cache / "metrics" / digits_mod.CLASSIFIER_FILE
    mtime = path.stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("the cached classifier should have been loaded")

    monkeypatch.setattr(digits_mod, "train_digits_classifier", no_training)
    again = DigitsFeatureSpace.load(digits_cache)
    assert path.stat().st_mtime_ns == mtime
    for a, b in zip(
        space.model.state_dict().values(), again.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)


def test_digits_input_formats_agree(digits):
    x = digits[0][:16]
    uint8 = ((x + 1) * 127.5).round().to(torch.uint8).repeat(1, 3, 1, 1).permute(0, 2, 3, 1)
    torch.testing.assert_close(to_digits_input(uint8.numpy()), x, atol=1 / 127.5, rtol=0)
    torch.testing.assert_close(to_digits_input(x.repeat(1, 3, 1, 1)), x)
    assert to_digits_input(torch.rand(4, 1, 32, 32) * 2 - 1).shape == (4, 1, 8, 8)


def test_fd_digits_separates_real_from_noise_and_tracks_quality(digits_cache, digits):
    x, y = digits
    a, b = x[::2], x[1::2]
    kw = dict(cache_dir=digits_cache)
    names = ["fd_digits", "is_digits", "precision_digits", "recall_digits", "acc_digits"]
    real = evaluate_images(a, b, names, labels=y[::2], **kw)
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(a.shape, generator=g) * 2 - 1
    fake = evaluate_images(noise, b, ["fd_digits"], **kw)
    assert fake["fd_digits"] > 20 * real["fd_digits"]
    assert real["precision_digits"] > 0.8 and real["recall_digits"] > 0.8
    assert real["acc_digits"] > 0.97 and real["is_digits"] > 7.0
    shuffled = y[::2][torch.randperm(len(a), generator=g)]
    assert (
        0.03 < evaluate_images(a, None, ["acc_digits"], labels=shuffled, **kw)["acc_digits"] < 0.2
    )
    levels = [0.6, 0.4, 0.2, 0.1, 0.0]
    fds = [
        evaluate_images((1 - t) * a + t * noise, b, ["fd_digits"], **kw)["fd_digits"]
        for t in levels
    ]
    assert all(d1 > d2 for d1, d2 in zip(fds, fds[1:], strict=False)), fds
    upsampled = torch.nn.functional.interpolate(a, size=16, mode="nearest")
    assert evaluate_images(upsampled, b, ["fd_digits"], **kw)["fd_digits"] < fds[1]


# ----------------------------------------------------------------------------- inputs
def test_npz_and_folder_sources(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (7, 5, 6, 3), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", arr_0=imgs, labels=np.arange(7))
    np.savez_compressed(tmp_path / "b.npz", arr_0=imgs)
    np.testing.assert_array_equal(load_images(tmp_path / "a.npz"), imgs)
    np.testing.assert_array_equal(load_images(tmp_path / "b.npz"), imgs)
    folder = tmp_path / "imgs" / "sub"
    folder.mkdir(parents=True)
    for i, im in enumerate(imgs[:3]):
        Image.fromarray(im).save(folder / f"{i}.png")
    (folder / "broken.jpg").write_bytes(b"not an image")
    with pytest.warns(UserWarning, match="broken.jpg"):
        loaded = load_images(tmp_path / "imgs")
    np.testing.assert_array_equal(loaded, imgs[:3])


# ----------------------------------------------------------------------------- Inception wiring
@pytest.fixture(scope="module")
def random_inception(tmp_path_factory):
    """torch-fidelity's FID Inception with random (variance-preserving) weights, saved under the
    official file name. Construction normally loads or downloads weights: both are stubbed."""
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    mp = pytest.MonkeyPatch()
    mp.setattr(tfi, "load_state_dict_from_url", lambda *a, **k: {})
    mp.setattr(
        tfi.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, strict=True: None
    )
    try:
        net = tfi.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    finally:
        mp.undo()
    torch.manual_seed(0)
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        elif isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=m.in_features**-0.5)
    path = tmp_path_factory.mktemp("weights") / INCEPTION_WEIGHTS_FILE
    torch.save(net.state_dict(), path)
    return path


def test_inception_metrics_wiring_and_reference_cache(random_inception, tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    samples = rng.integers(0, 256, (6, 24, 24, 3), dtype=np.uint8)
    ref_imgs = np.clip(samples.astype(int) // 2 + 60, 0, 255).astype(np.uint8)
    folder = tmp_path / "ref"
    folder.mkdir()
    for i, im in enumerate(ref_imgs):
        Image.fromarray(im).save(folder / f"{i:02d}.png")
    cache = tmp_path / "cache"
    kw = dict(inception_weights=random_inception, cache_dir=cache, fd_method="eigh", is_splits=2)
    names = ["fid", "sfid", "is", "precision", "recall"]
    first = evaluate_images(samples, folder, names, **kw)
    assert all(np.isfinite(v) for v in first.values()) and first["fid"] > 0, first
    cached = list((cache / "reference_stats").glob("*.npz"))
    assert len(cached) == 1
    assert {"mu", "sigma", "features", "mu_s", "sigma_s"} <= set(np.load(cached[0]).files)

    calls = []
    extract = evaluate_mod.extract_features
    monkeypatch.setattr(
        evaluate_mod, "extract_features", lambda *a, **k: calls.append(1) or extract(*a, **k)
    )
    mtime = cached[0].stat().st_mtime_ns
    assert evaluate_images(samples, folder, names, **kw) == pytest.approx(first)
    assert len(calls) == 1 and cached[0].stat().st_mtime_ns == mtime  # samples only

    same = evaluate_images(ref_imgs, folder, ["fid", "sfid"], **kw)
    assert abs(same["fid"]) < 1e-6 * first["fid"] and abs(same["sfid"]) < 1e-6 * first["sfid"]

    # the same network and preprocessing as torchmetrics' FID with the weights path
    from torchmetrics.image.fid import FrechetInceptionDistance

    fid = FrechetInceptionDistance(
        feature=2048, feature_extractor_weights_path=str(random_inception), antialias=False
    )
    fid.update(torch.from_numpy(ref_imgs).permute(0, 3, 1, 2), real=True)
    n = fid.real_features_num_samples
    mu = fid.real_features_sum / n
    sigma = (fid.real_features_cov_sum - n * torch.outer(mu, mu)) / (n - 1)
    pool = reference_stats(
        folder, "inception", **{k: kw[k] for k in ("inception_weights", "cache_dir")}
    )
    np.testing.assert_allclose(pool["pool"].mu, mu.numpy(), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(pool["pool"].sigma, sigma.numpy(), rtol=1e-4, atol=1e-10)

    # a stats-only reference (mu/sigma, as ADM / pytorch-fid ship) gives the same FID ...
    FeatureStats(pool["pool"].mu, pool["pool"].sigma).save(tmp_path / "stats.npz")
    only = evaluate_images(samples, tmp_path / "stats.npz", ["fid"], **kw)
    assert only["fid"] == pytest.approx(first["fid"], rel=1e-9)
    # ... but cannot give precision/recall
    with pytest.raises(ValueError, match="raw features"):
        evaluate_images(samples, tmp_path / "stats.npz", ["precision"], **kw)


def test_missing_inception_weights_and_unknown_metric_errors(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere" / INCEPTION_WEIGHTS_FILE
    images = np.zeros((4, 8, 8, 3), np.uint8)
    with pytest.raises(FileNotFoundError) as err:
        evaluate_images(images, images, ["fid"], inception_weights=missing)
    msg = str(err.value)
    assert (
        INCEPTION_WEIGHTS_FILE in msg and "metrics.inception_weights" in msg and str(missing) in msg
    )
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(FileNotFoundError, match="metrics.inception_weights") as err:
        evaluate_images(images, None, ["is"])
    assert os.path.join("torch_home", "hub", "checkpoints", INCEPTION_WEIGHTS_FILE) in str(
        err.value
    )
    with pytest.raises(ValueError, match="unknown metric") as err:
        evaluate_images(images, images, ["fid", "FID50k"])
    assert "FID50k" in str(err.value) and all(
        name in str(err.value) for name in available_metrics()
    )
