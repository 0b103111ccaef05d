"""Training callbacks for DiT: a fixed-noise, fixed-label grid of EMA samples every N steps."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from common.images import save_grid, to_uint8


class SampleGrid(L.Callback):
    """Every ``every_n_steps`` optimizer steps (and at the end of training) sample the EMA model
    from the same noise and labels and write ``<dirpath>/step_XXXXXXX.png`` (plus ``final.png``).

    Labels cycle through the classes so each row shows the classes in order. The grid goes to
    W&B as well when a W&B logger is attached.
    """

    def __init__(
        self,
        dirpath: str,
        every_n_steps: int = 1000,
        num_samples: int = 16,
        sampler: str | None = None,
        steps: int | None = None,
        cfg_scale: float = 1.0,
        seed: int = 0,
    ) -> None:
        self.dirpath = Path(dirpath)
        self.every_n_steps = every_n_steps
        self.num_samples = num_samples
        self.sampler = sampler
        self.steps = steps
        self.cfg_scale = cfg_scale
        self.seed = seed
        self.last_path: Path | None = None
        self._last_step = -1

    def _fixed_inputs(self, pl_module) -> tuple[torch.Tensor, torch.Tensor]:
        m = pl_module.model
        g = torch.Generator().manual_seed(self.seed)
        noise = torch.randn(
            self.num_samples, m.in_channels, m.input_size, m.input_size, generator=g
        )
        labels = torch.arange(self.num_samples) % m.num_classes
        return noise, labels

    def write(self, trainer: L.Trainer, pl_module, name: str) -> Path | None:
        if trainer.global_rank != 0:
            return None
        noise, labels = self._fixed_inputs(pl_module)
        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed + 1)
        images = pl_module.generate(
            labels,
            noise=noise,
            sampler=self.sampler,
            steps=self.steps,
            cfg_scale=self.cfg_scale,
            generator=generator,
        )
        nrow = min(pl_module.model.num_classes, self.num_samples)
        path = save_grid(to_uint8(images), self.dirpath / f"{name}.png", nrow=nrow)
        self.last_path = path
        for logger in trainer.loggers:
            if type(logger).__name__ == "WandbLogger":
                logger.log_image(
                    key="samples/ema_grid", images=[str(path)], step=trainer.global_step
                )
        return path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        due = self.every_n_steps and step > 0 and step % self.every_n_steps == 0
        if due and self._last_step != step:  # once per step under gradient accumulation
            self._last_step = step
            self.write(trainer, pl_module, f"step_{step:07d}")

    def on_train_end(self, trainer, pl_module) -> None:
        self.write(trainer, pl_module, "final")
