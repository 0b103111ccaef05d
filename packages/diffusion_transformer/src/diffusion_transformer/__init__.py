"""Class-conditional Diffusion Transformers (thesis ch. 2)."""

from common.config import register_resolvers

register_resolvers()
