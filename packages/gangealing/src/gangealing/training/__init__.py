"""Training: the GANgealing and StyleGAN2 LightningModules, perceptual losses, the cluster
classifier's training loop (thesis Sec. 4.3)."""
