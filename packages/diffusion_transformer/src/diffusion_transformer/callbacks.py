"""Training callbacks for DiT: a fixed-noise, fixed-label grid of EMA samples every N steps, the
evaluation of the EMA model during training, and the run summary that the scaling report reads.

Sampling runs on every rank (an FSDP-sharded EMA needs all ranks in each forward pass); only rank 0
writes files and logs.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from common.checkpoint import json_bytes, write_json
from common.data.images import save_grid, to_uint8
from diffusion_transformer.sampling import default_sampler

log = logging.getLogger(__name__)


class SampleGrid(L.Callback):
    """Every ``every_n_steps`` optimizer steps (and at the end of training) sample the EMA model
    from the same noise and labels and write ``<dirpath>/step_<step, 7 digits>.png`` (e.g.
    ``step_0001000.png``) plus ``final.png``.

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
        if trainer.global_rank != 0:
            return None
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


# ----------------------------------------------------------------------------- scaling records
def training_compute(gflops: float, global_batch: int, steps: int) -> float:
    """Training compute in Gflops (thesis Sec. 2.5): model Gflops x batch size x steps x 3, the
    factor 3 counting the backward pass as twice the forward."""
    return gflops * global_batch * steps * 3


def sampling_compute(gflops: float, steps: int, cfg_scale: float = 1.0) -> float:
    """Sampling compute per image in Gflops (Fig. 2.11): model Gflops x sampling steps, doubled
    when classifier-free guidance runs the conditional and unconditional halves."""
    return gflops * steps * (2 if cfg_scale != 1.0 else 1)


def _global_batch(trainer: L.Trainer) -> int:
    dm = trainer.datamodule
    per_device = getattr(dm, "batch_size", None)
    if per_device is None:
        raise ValueError("the datamodule must expose batch_size to record training compute")
    return int(per_device) * trainer.world_size * trainer.accumulate_grad_batches


class RunSummary(L.Callback):
    """Writes ``<run_dir>/run_summary.json``: what the FID-vs-Gflops report needs from a run.

    Model name, patch size, forward Gflops per image (paper convention, Table 2.1), parameter count,
    global batch size, steps done and training compute (Sec. 2.5). Rewritten at the start and the
    end of training, atomically, so a killed run still has a valid summary; the same numbers go to
    the summary of the run's W&B run.
    """

    def __init__(self, run_dir: str, model: str, patch: int, extra: dict | None = None) -> None:
        self.path = Path(run_dir) / "run_summary.json"
        self.model = model
        self.patch = patch
        self.extra = dict(extra or {})
        self._static: dict[str, Any] = {}

    def setup(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        # Before any strategy wraps (and possibly shards) the model.
        net = pl_module.model
        self._static = {
            "model": str(self.model),
            "patch": int(self.patch),
            "name": f"DiT-{self.model}/{self.patch}",
            "gflops": net.gflops(),
            "params": sum(p.numel() for p in net.parameters()),
            "input_size": net.input_size,
            "in_channels": net.in_channels,
            **self.extra,
        }

    def write(self, trainer: L.Trainer) -> None:
        if trainer.global_rank != 0 or not self._static:
            return
        batch = _global_batch(trainer)
        summary = {
            **self._static,
            "global_batch": batch,
            "step": trainer.global_step,
            "train_compute": training_compute(self._static["gflops"], batch, trainer.global_step),
        }
        write_json(summary, self.path)
        # Summary fields of the W&B run, so a scatter over the sweep's group (metric vs gflops or
        # train_compute) works while the sweep runs, before the report exists.
        fields = {k: summary[k] for k in ("gflops", "train_compute", "params", "global_batch")}
        for logger in trainer.loggers:
            if type(logger).__name__ == "WandbLogger":
                logger.experiment.summary.update(fields)

    def on_train_start(self, trainer, pl_module) -> None:
        self.write(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self.write(trainer)


class EvalMetrics(L.Callback):
    """Evaluates the EMA model every ``every_n_steps`` steps (and at the end of training).

    Draws ``num_samples`` images with fixed noise and class-balanced labels (the same at every
    evaluation, so values are comparable along training), scores them with ``common.metrics``
    against ``reference`` and logs ``eval/<metric>``. Each value is appended to
    ``<run_dir>/eval.jsonl`` with the step, sampling steps and training/sampling compute: the rows
    the scaling report (Figs. 2.8, 2.10, 2.11) is built from. At the end of training the metric is
    also measured for every entry of ``final_sampling_steps`` (the Fig. 2.11 axis). With
    ``reference=None`` (``eval.reference`` unset) the callback does nothing.
    """

    def __init__(
        self,
        run_dir: str,
        metrics: list[str],
        reference: str,
        every_n_steps: int = 10_000,
        num_samples: int = 1000,
        batch_size: int = 250,
        sampler: str | None = None,
        steps: int | None = None,
        cfg_scale: float = 1.0,
        final_sampling_steps: list[int] | None = None,
        inception_weights: str | None = None,
        cache_dir: str | None = None,
        seed: int = 0,
    ) -> None:
        if reference is not None and not metrics:
            raise ValueError(
                "metrics.names is empty: name at least one metric, e.g. [fd_digits] or [fid]"
            )
        self.path = Path(run_dir) / "eval.jsonl"
        self.metrics = list(metrics)
        self.reference = reference
        self.every_n_steps = every_n_steps
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.sampler = sampler
        self.steps = steps
        self.cfg_scale = cfg_scale
        self.final_sampling_steps = list(final_sampling_steps or [])
        self.inception_weights = inception_weights
        self.cache_dir = cache_dir
        self.seed = seed
        self._reference = None
        self._last_step = -1
        self.history: list[dict[str, Any]] = []

    def _samples(self, trainer, pl_module, steps: int | None) -> tuple[np.ndarray, np.ndarray]:
        """Every rank draws its share; the shares are gathered (on every rank, cheap at uint8).
        Rank 0 says what it draws and, with the trainer's progress bar on, shows one bar over
        all sampling steps of all batches."""
        world, rank = trainer.world_size, trainer.global_rank
        m = pl_module.model
        per_rank = math.ceil(self.num_samples / world)
        labels = torch.arange(per_rank * world) % m.num_classes
        labels = labels[rank * per_rank : (rank + 1) * per_rank]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + rank)
        gd = torch.Generator(device=pl_module.device).manual_seed(self.seed * 1_000_033 + rank)
        n_steps = self._sampling_steps(pl_module, steps)
        sampler = self.sampler or default_sampler(pl_module.diffusion_cfg)
        what = (
            f"evaluating step {trainer.global_step}: {self.num_samples} samples x {n_steps} "
            f"{sampler} steps (cfg scale {self.cfg_scale}) -> {', '.join(self.metrics)}"
        )
        bar = None
        if rank == 0:
            log.info(what)
            if trainer.progress_bar_callback is not None:
                from tqdm.auto import tqdm

                batches = math.ceil(per_rank / self.batch_size)
                bar = tqdm(total=batches * n_steps, desc=what, leave=False, dynamic_ncols=True)
        images = []
        for start in range(0, per_rank, self.batch_size):
            y = labels[start : start + self.batch_size]
            noise = torch.randn(len(y), m.in_channels, m.input_size, m.input_size, generator=g)
            x = pl_module.generate(
                y,
                noise=noise,
                sampler=self.sampler,
                steps=steps,
                cfg_scale=self.cfg_scale,
                generator=gd,
                progress=bar.update if bar is not None else False,
            )
            images.append(torch.from_numpy(to_uint8(x)))  # [n, H, W, 3] uint8
        if bar is not None:
            bar.close()
        local = torch.cat(images)
        if world > 1:
            local = pl_module.all_gather(local.to(pl_module.device)).flatten(0, 1)
            labels = pl_module.all_gather(labels.to(pl_module.device)).flatten(0, 1)
        return local.cpu().numpy()[: self.num_samples], labels.cpu().numpy()[: self.num_samples]

    def _sampling_steps(self, pl_module, steps: int | None) -> int:
        """``steps``, or this callback's, or the diffusion config's, or the sampler's default."""
        configured = steps or self.steps or pl_module.diffusion_cfg.get("sampling_steps")
        if configured:
            return configured
        sampler = self.sampler or default_sampler(pl_module.diffusion_cfg)
        return 250 if sampler == "ddpm" else 50

    def evaluate(self, trainer, pl_module, steps: int | None, final: bool = False) -> dict:
        from common.metrics import evaluate_images
        from diffusion_transformer.metrics import resolve_reference

        started = time.perf_counter()
        images, labels = self._samples(trainer, pl_module, steps)
        if trainer.global_rank != 0:
            return {}
        if self._reference is None:
            self._reference = resolve_reference(self.reference, image_size=images.shape[1])
        values = evaluate_images(
            images,
            self._reference,
            self.metrics,
            labels=labels,
            inception_weights=self.inception_weights,
            device=pl_module.device,
            cache_dir=self.cache_dir,
        )
        summary = next((c for c in trainer.callbacks if isinstance(c, RunSummary)), None)
        gflops = pl_module.model.gflops()
        batch = _global_batch(trainer)
        step = trainer.global_step
        n_steps = self._sampling_steps(pl_module, steps)
        rows = []
        for name, value in values.items():
            row = {
                "step": step,
                "metric": name,
                "value": float(value),
                "sampler": self.sampler or pl_module.diffusion_cfg.get("sampler"),
                "sampling_steps": n_steps,
                "cfg_scale": self.cfg_scale,
                "num_samples": len(images),
                "final": final,
                "gflops": gflops,
                "train_compute": training_compute(gflops, batch, step),
                "sampling_compute": sampling_compute(gflops, n_steps, self.cfg_scale),
            }
            if summary is not None:
                row.update(model=summary.model, patch=summary.patch)
            rows.append(row)
        self.history.extend(rows)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            for row in rows:
                f.write(json_bytes(row, indent=None).decode() + "\n")
        scores = ", ".join(f"{k} {float(v):.4g}" for k, v in values.items())
        log.info(f"evaluated step {step} in {time.perf_counter() - started:.0f} s: {scores}")
        suffix = "" if steps == self.steps else f"@{n_steps}steps"
        for logger in trainer.loggers:
            logger.log_metrics(
                {f"eval/{k}{suffix}": float(v) for k, v in values.items()}, step=step
            )
        return values

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        due = self.every_n_steps and step > 0 and step % self.every_n_steps == 0
        if due and self._last_step != step and self.reference is not None:
            self._last_step = step
            last = trainer.max_steps is not None and 0 < trainer.max_steps <= step
            self.evaluate(trainer, pl_module, self.steps, final=last)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.reference is None:
            return
        if self._last_step != trainer.global_step:
            self.evaluate(trainer, pl_module, self.steps, final=True)
        for steps in self.final_sampling_steps:
            if steps != self._sampling_steps(pl_module, None):
                self.evaluate(trainer, pl_module, steps, final=True)
