"""Shared pieces of the DiT, G.pt and GANgealing packages.

``nn/`` (blocks, embedders, flop counting), ``diffusion/`` (Gaussian diffusion, respacing,
samplers, rectified flow, guidance), ``training/`` (trainer, runs, EMA, guards, strategies,
loggers, throughput), ``data/`` (the digits, image I/O), ``metrics/`` (FID, IS, precision/recall);
at the top level what every command uses: ``cli``, ``errors``, ``checkpoint``, ``devices``.
"""

__version__ = "0.1.0"
