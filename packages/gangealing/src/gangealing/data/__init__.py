"""Real and synthetic image data: folders, SPair-71k, CUB, GAN training sets, warped photos."""
