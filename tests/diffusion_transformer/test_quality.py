"""Quality on real data (slow): the default digits run learns, and its samples are digits of the
requested class according to a classifier trained on digits the DiT never saw."""

import csv

import numpy as np
import pytest
import torch

from diffusion_transformer.data import DigitsDataModule
from diffusion_transformer.train import train

pytestmark = pytest.mark.slow


def test_digits_default_reaches_stated_loss_and_class_accuracy(compose_train, tmp_path):
    from sklearn.svm import SVC

    result = train(
        compose_train("logger=csv", "trainer.enable_progress_bar=false", f"run_dir={tmp_path}")
    )
    with open(tmp_path / "csv" / "metrics.csv") as f:
        losses = [float(r["train/loss"]) for r in csv.DictReader(f) if r["train/loss"]]
    assert np.mean(losses[:5]) > 0.2  # the curve starts high ...
    assert np.mean(losses[-20:]) < 0.11  # ... and ends at the stated loss (hybrid L_simple + vb)

    held_x, held_y = DigitsDataModule(seed=0).heldout()  # never trained on
    clf = SVC(gamma="scale").fit(held_x.flatten(1).numpy(), held_y.numpy())
    labels = torch.arange(200) % 10
    torch.manual_seed(0)
    for cfg_scale, threshold in ((1.0, 0.6), (3.0, 0.9)):
        images = result.module.generate(labels, cfg_scale=cfg_scale)  # EMA, DDPM 100 steps
        accuracy = (clf.predict(images.flatten(1).numpy()) == labels.numpy()).mean()
        assert accuracy > threshold, (cfg_scale, accuracy)  # chance is 0.1
