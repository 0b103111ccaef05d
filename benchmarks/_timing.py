"""Round-robin timing shared by the benchmarks: every row is timed once per round, the order
reversed every round, so that drift of the machine hits every row alike."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def round_robin(rows: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each row over ``rounds`` rounds, after one warm-up call each."""
    cuda = torch.cuda.is_available()
    for fn in rows.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in rows}
    for r in range(rounds):
        for name in list(rows)[:: 1 if r % 2 == 0 else -1]:
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            rows[name]()
            if cuda:
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
    return times
