"""OmegaConf resolvers shared by the packages' Hydra configs.

``${scale_int:<value>,<factor>}`` is ``round(value * factor)`` as an integer: it lets an experiment
shrink the widths of the Table 2.1 models by one factor (``experiment=digits_sweep`` trains DiT-S
and DiT-B at a quarter of their width on two CPU cores) without a copy of every model file.
Registration is idempotent; each package that uses a resolver calls :func:`register_resolvers` when
it is imported, so configs compose the same way from the CLI, from ``hydra.compose`` in tests and
from an installed wheel.
"""

from __future__ import annotations

from omegaconf import OmegaConf


def scale_int(value: float, factor: float) -> int:
    """``round(value * factor)``; at least 1, since it sizes layers."""
    scaled = int(round(float(value) * float(factor)))
    if scaled < 1:
        raise ValueError(f"scale_int:{value},{factor} gives {scaled}: a layer size must be >= 1")
    return scaled


def register_resolvers() -> None:
    """Register ``scale_int`` with OmegaConf (once)."""
    if not OmegaConf.has_resolver("scale_int"):
        OmegaConf.register_new_resolver("scale_int", scale_int)
