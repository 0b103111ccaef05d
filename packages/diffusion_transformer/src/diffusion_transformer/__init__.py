"""Class-conditional Diffusion Transformers (thesis ch. 2).

Importing the package registers the OmegaConf resolvers its configs use: ``scale_int`` (common)
and ``dit_size`` (``${dit_size:XL,depth,${model.depth}}``: Table 2.1's value unless overridden).
"""

from omegaconf import OmegaConf

from common.config import register_resolvers


def _dit_size(size: str, key: str, override: int | None = None) -> int:
    """Table 2.1's ``key`` for ``size`` (``diffusion_transformer.models.DIT_CONFIGS``)."""
    from diffusion_transformer.models import size_value  # lazily: torch only when composing

    return size_value(size, key, override)


register_resolvers()
if not OmegaConf.has_resolver("dit_size"):
    OmegaConf.register_new_resolver("dit_size", _dit_size)
