"""Cluster assignment of real images for K-mode GANgealing (thesis Sec. 4.3.2).

The hard assignment of Eq. 4.6 needs a sample's latent w, which real images do not have. As in
the thesis, a classifier is trained on generated images labelled with their assignment
k* = argmin_k L_align(T_k, c_k), initialised from the weights of T (its feature trunk) with a
fresh classification head. It generalises to real images, which are then aligned by T_{k*}.

``python -m gangealing.cluster_classifier ckpt=<gangealing run dir>`` trains it from the run's
last checkpoint and stores it in the run's ``congealer.pt`` (:func:`add_classifier`);
``Congealer`` then assigns clusters itself.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from common.checkpoint import atomic_save, safe_load
from common.errors import (
    NonFiniteError,
    require_choice,
    require_finite,
    require_positive_int,
)
from common.training.guards import NAN_POLICIES, gradients_finite
from gangealing.align.classifier import ClusterClassifier, trunk_widths
from gangealing.align.congealer import Congealer
from gangealing.align.official_stn import OfficialClusterClassifier, OfficialComposedSTN
from gangealing.align.released import official_classifier_for
from gangealing.training.module import GangealingModule

logger = logging.getLogger(__name__)


def _first_trunk(stn: nn.Module) -> nn.Module:
    return stn.similarity.trunk if hasattr(stn, "similarity") else stn.trunk


def train_cluster_classifier(
    module: GangealingModule, max_steps: int, batch_size: int, lr: float, nan_policy: str
) -> tuple[nn.Module, list[float]]:
    """Train on (G(w), k*) pairs from a trained GANgealing module; returns the classifier and
    its accuracy on each step's fresh batch (before the update). A step with NaN/inf gradients
    stops the training (``nan_policy=stop``) or is skipped (``skip``), as in every other loop."""
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 0:
        raise ValueError(f"max_steps={max_steps!r}: pass a whole number of steps >= 0")
    require_positive_int("batch_size", batch_size)
    if require_finite("optim.lr", lr) <= 0:
        raise ValueError(f"optim.lr={lr} must be positive; pass e.g. optim.lr=1e-3")
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
    for step in range(max_steps):
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
                    "nothing was written; lower optim.lr=, or pass nan_policy=skip"
                )
            skipped += 1
            continue
        opt.step()
    if skipped:
        logger.warning(
            "skipped %d of %d classifier steps with NaN/inf gradients", skipped, max_steps
        )
    return classifier.eval(), accuracy


def load_run(run: str | Path) -> GangealingModule:
    """The GANgealing module of a run directory (``checkpoints/last.ckpt``), weights restored."""
    ckpt_path = Path(run) / "checkpoints" / "last.ckpt"
    if not ckpt_path.is_file():
        raise FileNotFoundError(
            f"no checkpoint at {ckpt_path}: pass ckpt=<run dir of python -m gangealing.train>"
        )
    ckpt = safe_load(ckpt_path)
    module = GangealingModule(**ckpt["hyper_parameters"])
    module.on_load_checkpoint(ckpt)
    module.load_state_dict(ckpt["state_dict"])
    return module.eval()


def add_classifier(
    run: str | Path,
    max_steps: int,
    batch_size: int,
    lr: float,
    nan_policy: str,
    device: torch.device | str = "cpu",
) -> tuple[Path, float]:
    """Train the cluster classifier of the run in ``run`` and store it in its ``congealer.pt``;
    returns that file and the accuracy on generated images over the last 50 steps."""
    module = load_run(run).to(device)
    classifier, accuracy = train_cluster_classifier(module, max_steps, batch_size, lr, nan_policy)
    path = Path(run) / "congealer.pt"
    congealer = Congealer.load(path) if path.is_file() else module.congealer()
    congealer.classifier = classifier
    atomic_save(congealer.export(), path)
    tail = accuracy[-min(50, len(accuracy)) :]
    return path, sum(tail) / max(1, len(tail))
