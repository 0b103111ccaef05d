"""Cluster assignment of real images for K-mode GANgealing (thesis Sec. 4.3.2).

The hard assignment of Eq. 4.6 needs a sample's latent w, which real images do not have. As in
the thesis, a classifier is trained on generated images labelled with their assignment
k* = argmin_k L_align(T_k, c_k), initialised from the weights of T (its feature trunk) with a
fresh classification head. It generalises to real images, which are then aligned by T_{k*}.

``python -m gangealing.cluster_classifier run=<gangealing run dir> steps=2000`` trains it from
the run's last checkpoint and stores it in the run's ``congealer.pt``; ``Congealer`` then assigns
clusters itself.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from common.checkpoint import safe_load
from common.errors import (
    NonFiniteError,
    require_choice,
    require_finite,
    require_positive_int,
)
from common.training.guards import NAN_POLICIES, gradients_finite
from gangealing.align.classifier import ClusterClassifier, trunk_widths
from gangealing.align.official_stn import OfficialClusterClassifier, OfficialComposedSTN
from gangealing.align.released import official_classifier_for
from gangealing.training.module import GangealingModule

logger = logging.getLogger(__name__)


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
    require_positive_int("batch_size", batch_size)
    if require_finite("lr", lr) <= 0:
        raise ValueError(f"lr={lr} must be positive; pass e.g. lr=1e-3")
    require_choice("nan_policy", nan_policy, NAN_POLICIES)
    hp = module.hparams
    if hp.num_modes < 2:
        raise ValueError("the run has a single mode (num_modes=1): no clusters to classify")
    stns = module.stn_ema.module
    if isinstance(stns, OfficialComposedSTN):  # official init: the similarity stage's trunk
        classifier = official_classifier_for(stns)
        classifier.load_state_dict(stns.stns[0].state_dict(), strict=False)
    else:
        trunk = _first_trunk(stns[0])
        classifier = ClusterClassifier(hp.num_modes, trunk.input_size, trunk_widths(trunk))
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
                    "nothing was written; lower lr=, or pass nan_policy=skip"
                )
            skipped += 1
            continue
        opt.step()
    if skipped:
        logger.warning("skipped %d of %d classifier steps with NaN/inf gradients", skipped, steps)
    return classifier.eval(), accuracy


def classifier_record(classifier: nn.Module) -> dict[str, Any]:
    if isinstance(classifier, OfficialClusterClassifier):
        state = {k: v.detach().cpu() for k, v in classifier.state_dict().items()}
        return {"kind": "official", "num_modes": classifier.num_clusters, "state": state}
    return {
        "input_size": classifier.trunk.input_size,
        "widths": trunk_widths(classifier.trunk),
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
