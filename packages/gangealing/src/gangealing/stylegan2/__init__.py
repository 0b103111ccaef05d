"""StyleGAN2 in plain PyTorch (rosinality / GANgealing checkpoint layout) and its augmentations."""
