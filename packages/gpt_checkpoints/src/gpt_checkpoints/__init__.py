"""G.pt: loss-conditional diffusion over neural-network checkpoints (thesis chapter 3)."""

__version__ = "0.1.0"
