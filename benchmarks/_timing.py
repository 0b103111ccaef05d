"""Round-robin timing shared by the benchmarks: every row is warmed up, then timed once per
round, the order reversed every round (ABBA), so that drift of the machine hits every row alike.
A row that fails (compile error, out of memory) is reported as that row's error.

Peak memory per timed call: on CUDA ``torch.cuda.max_memory_allocated`` (absolute); on CPU the
growth of resident memory over its value at the call's start (Linux ``VmHWM`` reset through
``/proc/self/clear_refs`` after ``malloc_trim``; elsewhere the ``ru_maxrss`` delta).
"""

from __future__ import annotations

import contextlib
import ctypes
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class Row:
    """One benchmark row: what to call, and what its timed calls gave."""

    name: str
    call: Callable[[], object]
    times: list[float] = field(default_factory=list)
    peak: int = 0  # bytes
    error: str | None = None


def short_error(err: BaseException) -> str:
    """An exception as one short table cell."""
    return f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:90]}"


def _proc_status(key: str = "VmHWM:") -> int:
    """Bytes of a ``/proc/self/status`` field; without procfs, ``ru_maxrss`` (never resets)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_reset(device: torch.device) -> int:
    """Start a peak-memory window; returns the CPU baseline in bytes (0 on CUDA)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return 0
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back so RSS starts clean
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current resident size
        return _proc_status("VmRSS:")
    except OSError:
        return _proc_status()


def peak_read(device: torch.device, base: int) -> int:
    """Peak bytes since ``peak_reset``: absolute on CUDA, growth over ``base`` on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return _proc_status() - base


def timed(call: Callable[[], object], device: torch.device) -> tuple[object, float]:
    """``call()``'s result and its seconds, the device synchronised on both sides."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    out = call()
    sync()
    return out, time.perf_counter() - start


def measure(
    rows: list[Row], device: torch.device, warmup: int, rounds: int, memory: bool = True
) -> list[Row]:
    """Warm every row up (compiling happens here), then time them round-robin, call by call."""
    for row in rows:
        try:
            for _ in range(warmup):
                timed(row.call, device)
        except Exception as err:  # noqa: BLE001 (reported as the row)
            row.error = short_error(err)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    for r in range(rounds):
        for row in rows[:: 1 if r % 2 == 0 else -1]:
            if row.error is None:
                base = peak_reset(device) if memory else 0
                row.times.append(timed(row.call, device)[1])
                if memory:
                    row.peak = max(row.peak, peak_read(device, base))
    return rows


def round_robin(
    rows: dict[str, Callable[[], object]], rounds: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of each row over ``rounds`` rounds, after ``warmup`` calls each; a
    failing row raises (use :func:`measure` to report failures as rows)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    table = measure([Row(n, c) for n, c in rows.items()], device, warmup, rounds, memory=False)
    if failed := [row for row in table if row.error]:
        raise RuntimeError(f"benchmark row {failed[0].name!r} failed: {failed[0].error}")
    return {row.name: row.times for row in table}
