"""Class-conditional Diffusion Transformers (thesis ch. 2)."""
