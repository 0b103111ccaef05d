"""The G.pt network (``gpt``: this package's tokenisations; ``official``: the released
architecture and presets), its LightningModule (``module``: diffusion loss, EMA, sampling,
loading trained and released files) and pre-training (``training``)."""
