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
        cfg_interval: list[float] | None = None,
        seed: int = 0,
    ) -> None:
        self.dirpath = Path(dirpath)
        self.every_n_steps = every_n_steps
        self.num_samples = num_samples
        self.sampler = sampler
        self.steps = steps
        self.cfg_scale = cfg_scale
        self.cfg_interval = cfg_interval
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
            cfg_interval=self.cfg_interval,
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
    ``<run_dir>/eval.jsonl`` with the step, the training CPU time so far (``cpu_seconds``: process
    CPU time outside evaluations, carried over a resume), the sampler, its steps, the network
    evaluations per sample it made (``nfe``, counted) and training/sampling compute (Sec. 2.5;
    sampling compute is counted too: guidance doubles a pass, a guidance interval halves it
    again): the rows the report is built from. At the end of training the final model is also
    scored with every sampler and step count of ``final_samplers`` (``{sampler: [steps, ...]}``:
    the Fig. 2.11 axis, and the few-step table of each sampler). With ``reference=None``
    (``eval.reference`` unset) the callback does nothing.
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
        cfg_interval: list[float] | None = None,
        final_samplers: dict[str, list[int]] | None = None,
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
        self.cfg_interval = None if cfg_interval is None else [float(t) for t in cfg_interval]
        final_samplers = final_samplers or {}
        self.final_samplers = {str(k): [int(n) for n in v] for k, v in final_samplers.items()}
        self.inception_weights = inception_weights
        self.cache_dir = cache_dir
        self.seed = seed
        self._reference = None
        self._last_step = -1
        self._cpu_before = 0.0  # training CPU seconds of earlier stretches (restored on resume)
        self._cpu_start: float | None = None
        self._cpu_at: dict[int, float] = {}  # training CPU time of each evaluated step
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ training CPU time
    def cpu_seconds(self) -> float:
        """Process CPU time spent training so far: evaluations excluded, earlier stretches of a
        resumed run included."""
        if self._cpu_start is None:
            return self._cpu_before
        return self._cpu_before + time.process_time() - self._cpu_start

    def on_train_start(self, trainer, pl_module) -> None:
        self._cpu_start = time.process_time()

    def state_dict(self) -> dict[str, Any]:
        return {"cpu_seconds": self.cpu_seconds()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._cpu_before = float(state_dict.get("cpu_seconds", 0.0))

    # ------------------------------------------------------------------ sampling
    def _samples(
        self, trainer, pl_module, sampler: str, steps: int
    ) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
        """Every rank draws its share; the shares are gathered (on every rank, cheap at uint8).
        Rank 0 says what it draws and, with the trainer's progress bar on, shows one bar over
        all sampling steps of all batches. Also returns this rank's network evaluations per
        sample (``nfe``) and images forwarded per sample (``passes``: 2 where guided)."""
        world, rank = trainer.world_size, trainer.global_rank
        m = pl_module.model
        per_rank = math.ceil(self.num_samples / world)
        labels = torch.arange(per_rank * world) % m.num_classes
        labels = labels[rank * per_rank : (rank + 1) * per_rank]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + rank)
        gd = torch.Generator(device=pl_module.device).manual_seed(self.seed * 1_000_033 + rank)
        what = (
            f"evaluating step {trainer.global_step}: {self.num_samples} samples x {steps} "
            f"{sampler} steps (cfg scale {self.cfg_scale}) -> {', '.join(self.metrics)}"
        )
        bar, batches = None, math.ceil(per_rank / self.batch_size)
        if rank == 0:
            log.info(what)
            if trainer.progress_bar_callback is not None:
                from tqdm.auto import tqdm

                bar = tqdm(total=batches * steps, desc=what, leave=False, dynamic_ncols=True)
        counts = {"calls": 0, "rows": 0}

        def count(module, args, output) -> None:
            counts["calls"] += 1
            counts["rows"] += len(args[0])

        hook = pl_module.ema.module.register_forward_hook(count)
        images = []
        try:
            for start in range(0, per_rank, self.batch_size):
                y = labels[start : start + self.batch_size]
                noise = torch.randn(len(y), m.in_channels, m.input_size, m.input_size, generator=g)
                x = pl_module.generate(
                    y,
                    noise=noise,
                    sampler=sampler,
                    steps=steps,
                    cfg_scale=self.cfg_scale,
                    cfg_interval=self.cfg_interval,
                    generator=gd,
                    progress=bar.update if bar is not None else False,
                )
                images.append(torch.from_numpy(to_uint8(x)))  # [n, H, W, 3] uint8
        finally:
            hook.remove()
        if bar is not None:
            bar.close()
        cost = {"nfe": counts["calls"] / batches, "passes": counts["rows"] / per_rank}
        local = torch.cat(images)
        if world > 1:
            local = pl_module.all_gather(local.to(pl_module.device)).flatten(0, 1)
            labels = pl_module.all_gather(labels.to(pl_module.device)).flatten(0, 1)
        n = self.num_samples
        return local.cpu().numpy()[:n], labels.cpu().numpy()[:n], cost

    def _main_sampler(self, pl_module) -> tuple[str, int]:
        """The sampler and steps of the periodic evaluations: this callback's, else the diffusion
        config's, else the sampler's default."""
        sampler = self.sampler or default_sampler(pl_module.diffusion_cfg)
        steps = self.steps or pl_module.diffusion_cfg.get("sampling_steps")
        return sampler, steps or (250 if sampler == "ddpm" else 50)

    def evaluate(self, trainer, pl_module, sampler: str, steps: int, final: bool = False) -> dict:
        # Every evaluation of one step (the final model's samplers) reports the same time.
        cpu_seconds = self._cpu_at.setdefault(trainer.global_step, self.cpu_seconds())
        started, cpu_started = time.perf_counter(), time.process_time()
        images, labels, cost = self._samples(trainer, pl_module, sampler, steps)
        values = {}
        if trainer.global_rank == 0:
            values = self._score(trainer, pl_module, images, labels)
            self._record(trainer, pl_module, values, sampler, steps, cost, cpu_seconds, final)
            scores = ", ".join(f"{k} {float(v):.4g}" for k, v in values.items())
            log.info(
                f"evaluated step {trainer.global_step} in {time.perf_counter() - started:.0f} s: "
                f"{scores}"
            )
        self._cpu_before -= time.process_time() - cpu_started  # evaluations are not training
        return values

    def _score(self, trainer, pl_module, images: np.ndarray, labels: np.ndarray) -> dict:
        from common.metrics import evaluate_images
        from diffusion_transformer.metrics import resolve_reference

        if self._reference is None:
            self._reference = resolve_reference(self.reference, image_size=images.shape[1])
        return evaluate_images(
            images,
            self._reference,
            self.metrics,
            labels=labels,
            inception_weights=self.inception_weights,
            device=pl_module.device,
            cache_dir=self.cache_dir,
        )

    def _record(self, trainer, pl_module, values, sampler, steps, cost, cpu_seconds, final):
        """Append one row per metric to ``eval.jsonl`` and log ``eval/<metric>`` (suffixed
        ``@<steps>steps`` or ``@<sampler><steps>`` away from the main sampler and steps)."""
        summary = next((c for c in trainer.callbacks if isinstance(c, RunSummary)), None)
        gflops = pl_module.model.gflops()
        step = trainer.global_step
        rows = []
        for name, value in values.items():
            row = {
                "step": step,
                "metric": name,
                "value": float(value),
                "sampler": sampler,
                "sampling_steps": steps,
                "nfe": cost["nfe"],
                "cfg_scale": self.cfg_scale,
                "cfg_interval": self.cfg_interval,
                "num_samples": self.num_samples,
                "final": final,
                "cpu_seconds": cpu_seconds,
                "gflops": gflops,
                "train_compute": training_compute(gflops, _global_batch(trainer), step),
                "sampling_compute": gflops * cost["passes"],
            }
            if summary is not None:
                row.update(model=summary.model, patch=summary.patch)
            rows.append(row)
        self.history.extend(rows)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            for row in rows:
                f.write(json_bytes(row, indent=None).decode() + "\n")
        main_sampler, main_steps = self._main_sampler(pl_module)
        suffix = ""
        if sampler != main_sampler:
            suffix = f"@{sampler}{steps}"
        elif steps != main_steps:
            suffix = f"@{steps}steps"
        for logger in trainer.loggers:
            logger.log_metrics(
                {f"eval/{k}{suffix}": float(v) for k, v in values.items()}, step=step
            )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        due = self.every_n_steps and step > 0 and step % self.every_n_steps == 0
        if due and self._last_step != step and self.reference is not None:
            self._last_step = step
            last = trainer.max_steps is not None and 0 < trainer.max_steps <= step
            self.evaluate(trainer, pl_module, *self._main_sampler(pl_module), final=last)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.reference is None:
            return
        main = self._main_sampler(pl_module)
        if self._last_step != trainer.global_step:
            self.evaluate(trainer, pl_module, *main, final=True)
        for sampler, all_steps in self.final_samplers.items():
            for steps in all_steps:
                if (sampler, steps) != main:
                    self.evaluate(trainer, pl_module, sampler, steps, final=True)
