"""Train the cluster classifier of a K-mode GANgealing run (thesis Sec. 4.3.2):
``python -m gangealing.cluster_classifier ckpt=<run dir of gangealing.train> max_steps=2000``.

Generated images labelled with their assignment k* (and, with flips, whether the mirror won)
train a classifier that routes real images to their mode's transformer; it is stored in the run's
``congealer.pt``.
"""

from __future__ import annotations

from omegaconf import DictConfig

from common.cli import hydra_main

# What makes sense for each number this command reads (common.errors.check_values).
CHECKS = {"max_steps": "int>=1", "batch_size": "int>=1", "optim.lr": ">0"}


@hydra_main("cluster_classifier", checks=CHECKS)
def main(cfg: DictConfig) -> None:
    from common.devices import pick_device
    from gangealing.training.cluster_classifier import add_classifier

    path, accuracy = add_classifier(
        cfg.ckpt, cfg.max_steps, cfg.batch_size, cfg.optim.lr, cfg.nan_policy,
        device=pick_device(cfg.device),
    )  # fmt: skip
    print(f"accuracy on generated images (last {min(50, cfg.max_steps)} steps): {accuracy:.3f}")
    print(f"congealer with classifier: {path}")


if __name__ == "__main__":  # the module's own main, so the config knows its command's name
    from gangealing.cluster_classifier import main as _main

    _main()
