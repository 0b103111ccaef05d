"""Distributed strategies from YAML (``conf/strategy/{auto,ddp,fsdp}.yaml``).

Lightning's ``FSDPStrategy`` takes its wrap policies as Python sets of classes, which OmegaConf
cannot hold: ``module_wrap_policy`` builds a ``ModuleWrapPolicy`` from a YAML list of class paths
instead, for the auto-wrap units and for activation checkpointing alike.

FSDP and the EMA (thesis Sec. 2.4, decay 0.9999): the model class and its block class must both be
wrap units. The trainable model and its EMA copy (``common.training.ema.EMA``) then become two FSDP
units of identical layout, so on every rank their parameters are identical slices of identical flat
parameters, and the EMA update is a local element-wise lerp of matching shards with no
communication. Were the model class not a unit, its non-block parameters and those of the EMA
would share the root's flat parameter and be sharded together, so that one rank would hold the
model's and another the EMA's.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import lightning as L
import torch
from torch import nn
from torch.distributed.fsdp.wrap import ModuleWrapPolicy


def import_class(path: str) -> type[nn.Module]:
    """``"package.module.Class"`` -> the ``nn.Module`` subclass it names."""
    module_name, _, name = path.rpartition(".")
    try:
        if not module_name:
            raise ImportError("not a dotted path")
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        raise ImportError(
            f"cannot import the FSDP module class {path!r} ({err}); give full class paths "
            "(package.module.Class), as fsdp_wrap_classes in the train config does"
        ) from err
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"{path!r} is not a torch.nn.Module class: FSDP wraps modules")
    return cls


def module_wrap_policy(module_classes: Sequence[str | type[nn.Module]]) -> ModuleWrapPolicy | None:
    """A FSDP policy selecting every instance of ``module_classes`` (class paths or classes).

    Used for ``auto_wrap_policy`` (the FSDP units: one all-gather per unit) and for
    ``activation_checkpointing_policy`` (the modules whose activations are recomputed in the
    backward pass). An empty list gives ``None``: no policy, which is how activation checkpointing
    is switched off in ``conf/strategy/fsdp.yaml``.
    """
    classes = {c if isinstance(c, type) else import_class(str(c)) for c in module_classes}
    return ModuleWrapPolicy(classes) if classes else None


def auto_strategy() -> str:
    """Lightning's own choice (``strategy="auto"``): one device -> single-device, several -> DDP."""
    return "auto"


def full_state_dict(trainer: L.Trainer) -> dict[str, torch.Tensor]:
    """The LightningModule's complete, unsharded state dict on global rank 0; ``{}`` elsewhere.

    Under FSDP the shards are all-gathered to rank 0's CPU, so every rank must call this (it is
    a collective); the keys are the module's own (``model.*``, ``ema.module.*``), free of FSDP and
    activation-checkpointing wrapper prefixes.
    """
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    model = trainer.strategy.model
    if isinstance(model, FSDP):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(model, options=options)
        return state if trainer.is_global_zero else {}
    return trainer.lightning_module.state_dict() if trainer.is_global_zero else {}
