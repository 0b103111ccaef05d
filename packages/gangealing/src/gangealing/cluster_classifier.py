"""Train the cluster classifier of a K-mode GANgealing run (thesis Sec. 4.3.2):
``python -m gangealing.cluster_classifier run=<run dir of gangealing.train> steps=2000``.

Generated images labelled with their assignment k* (and, with flips, whether the mirror won)
train a classifier that routes real images to their mode's transformer; it is stored in the run's
``congealer.pt``. The former ``<run> --steps N --batch-size B`` spelling still works for one
release, with a deprecation line.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from common.checkpoint import atomic_save, safe_load
from common.cli import hydra_main
from gangealing.training.cluster_classifier import (
    classifier_record,
    load_run,
    train_cluster_classifier,
)

# What makes sense for each number this command reads (common.errors.check_values).
CHECKS = {"max_steps": "int>=1", "batch_size": "int>=1", "optim.lr": ">0"}
# Former spellings, kept one release: the argparse flags, then steps=/lr= (now the training
# commands' max_steps and optim.lr).
LEGACY_FLAGS = {
    "--steps": "max_steps",
    "--batch-size": "batch_size",
    "--lr": "optim.lr",
    "--nan-policy": "nan_policy",
    "steps": "max_steps",
    "lr": "optim.lr",
}


@hydra_main(
    "cluster_classifier",
    input_paths=("run",),
    checks=CHECKS,
    legacy_flags=LEGACY_FLAGS,
    legacy_positional=("run",),
)
def main(cfg: DictConfig) -> None:
    run = Path(cfg.run)
    module = load_run(run)
    classifier, accuracy = train_cluster_classifier(
        module, cfg.max_steps, cfg.batch_size, cfg.optim.lr, cfg.nan_policy
    )
    congealer_path = run / "congealer.pt"
    blob = safe_load(congealer_path) if congealer_path.is_file() else module.export()
    blob["classifier"] = classifier_record(classifier)
    atomic_save(blob, congealer_path)
    tail = accuracy[-min(50, len(accuracy)) :]
    print(f"accuracy on generated images (last {len(tail)} steps): {sum(tail) / len(tail):.3f}")
    print(f"congealer with classifier: {congealer_path}")


if __name__ == "__main__":
    from gangealing.cluster_classifier import main as _main

    _main()
