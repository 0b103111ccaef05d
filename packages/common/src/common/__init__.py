"""Shared pieces of the DiT, G.pt and GANgealing packages: blocks, diffusion, EMA, flops, I/O."""

__version__ = "0.1.0"
