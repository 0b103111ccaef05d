"""NaN/inf guards: no training step applies a non-finite gradient and no checkpoint holds one.

``NonFiniteGuard`` (added to every trainer by ``common.training.build_trainer``) looks at the
gradients each optimizer is about to apply, in automatic and manual optimisation alike. On the
first non-finite one it stops the run (``nan_policy=stop``, the default) with a
``NonFiniteError`` naming the step, the loss terms that went non-finite and what to try, before
the parameters change, so the last checkpoint on disk stays the last finite one; or it drops that
update (``nan_policy=skip``), counts it and logs ``train/skipped_steps``. No file holding NaN or
inf is written either: ``SafeCheckpointIO`` and ``atomic_save`` call
``common.checkpoint.require_finite_state`` first.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import lightning as L
import torch

from common.checkpoint import ADVICE
from common.errors import NonFiniteError

NAN_POLICIES = ("stop", "skip")


def gradients_finite(params: Iterable[torch.nn.Parameter]) -> bool:
    """Whether every gradient of ``params`` is finite (and below float32 overflow when squared)."""
    grads = [p.grad for p in params if p.grad is not None]
    return not grads or bool(_finite_flag(grads))


def _finite_flag(grads: list[torch.Tensor]) -> torch.Tensor:
    """One boolean tensor (a single reduction, one sync): every gradient is finite and so is its
    square in float32 (|g| < 1.8e19), so Adam's second moment cannot overflow to inf either."""
    norms = torch._foreach_norm(grads, ord=float("inf"))
    return torch.isfinite((torch.stack([n.float() for n in norms]) ** 2).sum())


class NonFiniteGuard(L.Callback):
    """Stop on (or skip) the first optimizer step whose gradients hold NaN or inf."""

    def __init__(self, nan_policy: str = "stop") -> None:
        if nan_policy not in NAN_POLICIES:
            raise ValueError(f"nan_policy={nan_policy!r}; choose one of {', '.join(NAN_POLICIES)}")
        self.nan_policy = nan_policy
        self.skipped = 0

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if all(p.grad is None for p in params):
            return
        finite = trainer.strategy.reduce_boolean_decision(gradients_finite(params), all=True)
        if finite:
            return
        if self.nan_policy == "skip":
            for p in params:
                p.grad = None  # the optimizer leaves parameters without a gradient untouched
            self.skipped += 1
            pl_module.log("train/skipped_steps", float(self.skipped), reduce_fx="max")
            return
        raise NonFiniteError(self._message(trainer, pl_module, params))

    def _message(self, trainer, pl_module, params: list[torch.nn.Parameter]) -> str:
        names = {id(p): n for n, p in pl_module.named_parameters()}
        first = next(
            (names.get(id(p), "?") for p in params
             if not gradients_finite([p])),
            "?",
        )  # fmt: skip
        metrics = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
        bad = sorted(k for k, v in metrics.items() if not bool(torch.isfinite(v).all()))
        if bad:
            what = f"loss terms {', '.join(bad)} went NaN/inf"
        else:
            shown = ", ".join(f"{k}={float(v):.3g}" for k, v in sorted(metrics.items())[:3])
            what = f"the gradients went NaN/inf or overflow float32 ({shown or 'loss finite'})"
        return (
            f"non-finite gradients at step {trainer.global_step}: {what}; first bad gradient: "
            f"{first}. Stopped before applying them, so the last checkpoint is the last finite "
            f"one; {ADVICE}"
        )

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))


class FlushLogsOnError(L.Callback):
    """Write the loggers' buffered rows when a run fails (Lightning's CSV logger otherwise loses
    everything since its last flush): a stopped run keeps its loss curve up to the error."""

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        for logger in trainer.loggers:
            save = getattr(logger, "save", None)
            if callable(save):
                save()
