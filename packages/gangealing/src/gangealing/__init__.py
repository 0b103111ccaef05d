"""GANgealing: GAN-supervised dense visual alignment (thesis chapter 4)."""

__version__ = "0.1.0"
