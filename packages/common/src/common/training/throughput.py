"""Training throughput: images per second, model flops utilisation (MFU) and peak memory.

MFU is the model's training flops per second on one device over that device's dense peak for the
training precision (nanoGPT's ``estimate_mfu``). The training flops of one sample are 3 x the
forward flops (the backward pass costs twice the forward) in real flops, 2 per multiply-add:
twice the multiply-adds that ``common.nn.flops.count_macs`` and the DiT paper's Gflops count (thesis
Sec. 2.3.2). Rates come from ``lightning.fabric.utilities.throughput.Throughput``.
"""

from __future__ import annotations

import time

import lightning as L
import torch
from lightning.fabric.utilities.throughput import Throughput, get_available_flops

#: Dense (no 2:4 sparsity) tensor-core peaks per device. Lightning's table lists the H200 under
#: names that ``torch.cuda.get_device_name`` does not return ("NVIDIA H200", "NVIDIA H200 NVL")
#: and with the sparse figures (2 Pflop/s bf16), which would halve the MFU.
DENSE_PEAK_FLOPS: dict[str, dict[torch.dtype | str, float]] = {
    "h200 nvl": {
        torch.bfloat16: 835e12,
        torch.float16: 835e12,
        "tfloat32": 417.5e12,
        torch.float32: 60e12,
    },
    "h200": {
        torch.bfloat16: 989e12,
        torch.float16: 989e12,
        "tfloat32": 494.5e12,
        torch.float32: 67e12,
    },
}


def precision_dtype(precision: str | int | None) -> torch.dtype:
    """The matmul dtype of a Lightning precision setting (``bf16-mixed`` -> ``torch.bfloat16``)."""
    p = str(precision)
    if p.startswith("bf16"):
        return torch.bfloat16
    if p.startswith("16"):
        return torch.float16
    return torch.float32


def peak_flops(device: torch.device, precision: str | int | None) -> float | None:
    """Dense peak flop/s of one ``device`` at the given precision; ``None`` when unknown (CPUs).

    float32 counts as TF32 on GPUs when TF32 matmuls are on (``tf32: true``).
    """
    dtype = precision_dtype(precision)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device).lower()
        for chip, table in DENSE_PEAK_FLOPS.items():
            if all(word in name for word in chip.split()):
                tf32 = torch.get_float32_matmul_precision() != "highest"
                return table["tfloat32" if dtype is torch.float32 and tf32 else dtype]
    if device.type not in ("cuda", "xla"):
        return None
    flops = get_available_flops(device, dtype)
    return float(flops) if flops else None


class ThroughputMonitor(L.Callback):
    """Logs ``perf/images_per_sec`` (all ranks together), ``perf/mfu`` and ``perf/peak_mem_gib``
    every ``every_n_steps`` optimizer steps.

    ``flops_per_sample``: training flops of one sample; by default the LightningModule's
    ``flops_per_sample()`` when it has one. ``peak_flops``: per-device peak flop/s; by default
    ``peak_flops(device, trainer.precision)``. MFU is omitted when either is unknown (the CPU).
    The peak memory is rank 0's ``torch.cuda.max_memory_allocated`` (omitted on the CPU).

    Rates are measured between logging steps, from the end of the first batch on (which excludes
    compilation and data-loader start-up), with one device synchronisation per logging step.
    All ranks are assumed to process batches of equal size (``drop_last`` loaders do).
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        flops_per_sample: float | None = None,
        peak_flops: float | None = None,
    ) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.flops_per_sample = flops_per_sample
        self.peak_flops = peak_flops
        self.last_metrics: dict[str, float] = {}
        self._throughput: Throughput | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.flops_per_sample is None and callable(getattr(pl_module, "flops_per_sample", None)):
            self.flops_per_sample = float(pl_module.flops_per_sample())
        if self.peak_flops is None:
            self.peak_flops = peak_flops(pl_module.device, trainer.precision)
        self._throughput = Throughput(
            available_flops=self.peak_flops, world_size=trainer.world_size, window_size=2
        )
        self._batches = 0
        self._samples = 0
        self._samples_logged = 0
        self._start = time.perf_counter()
        self._last_step = -1
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._batches += 1
        self._samples += _batch_size(batch)
        step = trainer.global_step
        first = self._batches == 1
        due = step % self.every_n_steps == 0 and step != self._last_step
        if not (first or due):
            return
        self._last_step = step
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        throughput = self._throughput
        new_samples, self._samples_logged = self._samples - self._samples_logged, self._samples
        flops = None if self.flops_per_sample is None else new_samples * self.flops_per_sample
        throughput.update(
            time=time.perf_counter() - self._start,
            batches=self._batches,
            samples=self._samples,
            flops=flops,
        )
        metrics = throughput.compute()
        if "device/samples_per_sec" not in metrics:
            return
        out = {"perf/images_per_sec": metrics["device/samples_per_sec"] * trainer.world_size}
        if "device/mfu" in metrics:
            out["perf/mfu"] = metrics["device/mfu"]
        if pl_module.device.type == "cuda":
            out["perf/peak_mem_gib"] = torch.cuda.max_memory_allocated(pl_module.device) / 2**30
        self.last_metrics = out
        for logger in trainer.loggers:  # at Lightning's step for this batch's train/* metrics
            logger.log_metrics(out, step=step - 1)


def _batch_size(batch) -> int:
    """Samples in a batch: the leading dimension of its first tensor."""
    while isinstance(batch, (list, tuple)):
        batch = batch[0]
    if isinstance(batch, dict):
        return _batch_size(next(iter(batch.values())))
    return int(batch.shape[0])
