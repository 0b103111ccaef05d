"""Cluster assignment of real images for K-mode GANgealing (thesis Sec. 4.3.2).

The hard assignment of Eq. 4.6 needs a sample's latent w, which real images do not have. As in
the thesis, a classifier is trained on generated images labelled with their assignment
k* = argmin_k L_align(T_k, c_k), initialised from the weights of T (its feature trunk) with a
fresh classification head. It generalises to real images, which are then aligned by T_{k*}.

``python -m gangealing.cluster_classifier <gangealing run dir> --steps 2000`` trains it from the
run's last checkpoint and stores it in the run's ``congealer.pt``; ``Congealer`` then assigns
clusters itself.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from common.checkpoint import atomic_save, safe_load
from common.cli import user_errors
from common.errors import (
    NonFiniteError,
    require_choice,
    require_finite,
    require_positive_int,
)
from common.guards import NAN_POLICIES, gradients_finite
from gangealing.module import GangealingModule
from gangealing.official_stn import OfficialClusterClassifier, OfficialComposedSTN
from gangealing.released import official_classifier_for
from gangealing.stn import ConvTrunk

logger = logging.getLogger(__name__)


class ClusterClassifier(nn.Module):
    """Feature trunk of T, global average pooling and a linear head over the K clusters."""

    def __init__(self, num_modes: int, input_size: int, widths: list[int] | tuple[int, ...]):
        super().__init__()
        self.trunk = ConvTrunk(input_size, tuple(widths))
        self.head = nn.Linear(self.trunk.out_channels, num_modes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(images).mean((2, 3)))


def _first_trunk(stn: nn.Module) -> nn.Module:
    return stn.similarity.trunk if hasattr(stn, "similarity") else stn.trunk


def train_cluster_classifier(
    module: GangealingModule,
    steps: int = 2000,
    batch_size: int = 32,
    lr: float = 1e-3,
    nan_policy: str = "stop",
) -> tuple[nn.Module, list[float]]:
    """Train on (G(w), k*) pairs from a trained GANgealing module; returns the classifier and
    its accuracy on each step's fresh batch (before the update). A step with NaN/inf gradients
    stops the training (``nan_policy=stop``) or is skipped (``skip``), as in every other loop."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps={steps!r}: pass a whole number of steps >= 0")
    require_positive_int("--batch-size", batch_size)
    if require_finite("--lr", lr) <= 0:
        raise ValueError(f"--lr {lr} must be positive; pass e.g. --lr 1e-3")
    require_choice("--nan-policy", nan_policy, NAN_POLICIES)
    hp = module.hparams
    if hp.num_modes < 2:
        raise ValueError("the run has a single mode (num_modes=1): no clusters to classify")
    stns = module.stn_ema.module
    if isinstance(stns, OfficialComposedSTN):  # official init: the similarity stage's trunk
        classifier = official_classifier_for(stns)
        classifier.load_state_dict(stns.stns[0].state_dict(), strict=False)
    else:
        trunk = _first_trunk(stns[0])
        classifier = ClusterClassifier(hp.num_modes, trunk.input_size, _widths(trunk))
        classifier.trunk.load_state_dict(trunk.state_dict())
    classifier = classifier.to(module.device)
    opt = torch.optim.Adam(classifier.parameters(), lr=lr)
    accuracy, skipped = [], 0
    for step in range(steps):
        with torch.no_grad():
            x, y = module.pairs(batch_size, psi=0.0)
            labels = module.alignment_losses(stns, x, y)["assignment"]
            if not isinstance(classifier, OfficialClusterClassifier):  # K logits, no mirror
                labels = labels % hp.num_modes
        logits = classifier(x)
        loss = F.cross_entropy(logits, labels)
        accuracy.append(float((logits.argmax(1) == labels).float().mean()))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if not gradients_finite(classifier.parameters()):
            if nan_policy == "stop":
                raise NonFiniteError(
                    f"non-finite gradients at classifier step {step} (loss {float(loss):.3g}); "
                    "nothing was written; lower --lr, or pass --nan-policy skip"
                )
            skipped += 1
            continue
        opt.step()
    if skipped:
        logger.warning("skipped %d of %d classifier steps with NaN/inf gradients", skipped, steps)
    return classifier.eval(), accuracy


def _widths(trunk: ConvTrunk) -> list[int]:
    return [m.out_channels for m in trunk.layers if isinstance(m, nn.Conv2d)][::2]


def classifier_record(classifier: nn.Module) -> dict[str, Any]:
    if isinstance(classifier, OfficialClusterClassifier):
        state = {k: v.detach().cpu() for k, v in classifier.state_dict().items()}
        return {"kind": "official", "num_modes": classifier.num_clusters, "state": state}
    return {
        "input_size": classifier.trunk.input_size,
        "widths": _widths(classifier.trunk),
        "num_modes": classifier.head.out_features,
        "state": {k: v.detach().cpu() for k, v in classifier.state_dict().items()},
    }


def load_run(run: str | Path) -> GangealingModule:
    """The GANgealing module of a run directory (``checkpoints/last.ckpt``), weights restored."""
    ckpt_path = Path(run) / "checkpoints" / "last.ckpt"
    if not ckpt_path.is_file():
        raise FileNotFoundError(
            f"no checkpoint at {ckpt_path}: pass run=<run dir of python -m gangealing.train>"
        )
    ckpt = safe_load(ckpt_path)
    module = GangealingModule(**ckpt["hyper_parameters"])
    module.on_load_checkpoint(ckpt)
    module.load_state_dict(ckpt["state_dict"])
    return module.eval()


@user_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="run directory of python -m gangealing.train")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--nan-policy", default="stop", choices=NAN_POLICIES)
    args = parser.parse_args(argv)
    require_positive_int("--steps", args.steps)
    module = load_run(args.run)
    classifier, accuracy = train_cluster_classifier(
        module, args.steps, args.batch_size, args.lr, args.nan_policy
    )
    congealer_path = args.run / "congealer.pt"
    blob = safe_load(congealer_path) if congealer_path.is_file() else module.export()
    blob["classifier"] = classifier_record(classifier)
    atomic_save(blob, congealer_path)
    tail = accuracy[-min(50, len(accuracy)) :]
    print(f"accuracy on generated images (last {len(tail)} steps): {sum(tail) / len(tail):.3f}")
    print(f"congealer with classifier: {congealer_path}")


if __name__ == "__main__":
    main()
