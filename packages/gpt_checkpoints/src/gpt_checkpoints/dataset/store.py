"""On-disk format of a checkpoint dataset (thesis Sec. 3.2.1, Algorithm 1).

A dataset is a folder::

    manifest.json                     format, task name and recipe, parameter layout (names and
                                      shapes, in flattening order), metric names, checkpoints/run
    runs/run_0000042.safetensors      one shard per run, named by its seed:
                                        params      float32 [C, P]  flat parameter vectors
                                        iteration   int64   [C]     update count of each checkpoint
                                        <metric>    float32 [C]     e.g. train_loss, test_error
                                      metadata: seed, task
    runs/run_0000007.filtered.json    a run dropped for NaN/inf or |w| > max_abs (with the reason)

Shards are written atomically (temporary file, fsync, rename), so a killed collection leaves only
complete shards; re-running the same command skips every seed that has a shard or a filtered
marker and trains the rest. Shards are safetensors: reading them runs no code.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from common.checkpoint import atomic_write_bytes
from gpt_checkpoints.params.layout import ParamLayout

log = logging.getLogger(__name__)

FORMAT = "gpt-checkpoints/1"
#: Units of the metrics (the released G.pt's), recorded in every manifest.
METRIC_UNITS = {"train_error": "percent", "test_error": "percent"}


@dataclass
class RunData:
    """All checkpoints of some runs: ``params [R, C, P]``, ``iteration [R, C]``, metrics
    ``{name: [R, C]}`` and the runs' ``seeds [R]``."""

    params: torch.Tensor
    iteration: torch.Tensor
    metrics: dict[str, torch.Tensor]
    seeds: torch.Tensor

    def select(self, index: torch.Tensor) -> RunData:
        return RunData(
            self.params[index],
            self.iteration[index],
            {k: v[index] for k, v in self.metrics.items()},
            self.seeds[index],
        )


class CorruptShardError(ValueError):
    pass


class CheckpointStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.runs_dir = self.root / "runs"

    # ------------------------------------------------------------------ manifest
    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def manifest(self) -> dict:
        if not self.manifest_path.is_file():
            raise FileNotFoundError(
                f"no checkpoint dataset at {self.root} (manifest.json missing); build one with "
                f"`python -m gpt_checkpoints.collect task=... runs=N out={self.root}`"
            )
        return json.loads(self.manifest_path.read_text())

    def layout(self) -> ParamLayout:
        return ParamLayout.from_list(self.manifest()["layout"])

    def init_manifest(self, manifest: dict) -> None:
        """Write the manifest, or check that an existing one describes the same collection."""
        units = {k: v for k, v in METRIC_UNITS.items() if k in manifest.get("metrics", ())}
        manifest = json.loads(json.dumps({"format": FORMAT, **manifest, "metric_units": units}))
        if self.manifest_path.is_file():
            old = json.loads(self.manifest_path.read_text())
            keys = ("format", "task", "recipe", "layout", "metrics", "checkpoints_per_run")
            diff = [k for k in keys if old.get(k) != manifest.get(k)]
            if diff:
                raise ValueError(
                    f"{self.root} already holds a checkpoint dataset with a different "
                    f"{', '.join(diff)} (existing: {[old.get(k) for k in diff]}, requested: "
                    f"{[manifest.get(k) for k in diff]}); collect into a new out= folder or use "
                    "the original settings to extend it"
                )
            return
        atomic_write_bytes(json.dumps(manifest, indent=2).encode(), self.manifest_path)

    # ------------------------------------------------------------------ shards
    def shard_path(self, seed: int) -> Path:
        return self.runs_dir / f"run_{seed:07d}.safetensors"

    def filtered_path(self, seed: int) -> Path:
        return self.runs_dir / f"run_{seed:07d}.filtered.json"

    def _check_shard(self, path: Path) -> None:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                keys = set(f.keys())
        except Exception as err:  # safetensors raises its own error types
            raise CorruptShardError(
                f"checkpoint shard {path} is corrupted ({err}); delete it and re-run the same "
                "collect command to train that run again"
            ) from err
        if not {"params", "iteration"} <= keys:
            raise CorruptShardError(
                f"checkpoint shard {path} lacks 'params'/'iteration'; delete it and re-run the "
                "same collect command"
            )

    def is_done(self, seed: int) -> bool:
        """Whether a run needs no more work: a readable shard or a filtered marker exists.

        A corrupted shard (damaged after it was written) is reported, removed and retrained."""
        if self.filtered_path(seed).is_file():
            return True
        path = self.shard_path(seed)
        if not path.is_file():
            return False
        try:
            self._check_shard(path)
        except CorruptShardError as err:
            warnings.warn(
                f"{err}. Removing it so this collection trains the run again.", stacklevel=2
            )
            path.unlink()
            return False
        return True

    def write_run(
        self, seed: int, params: torch.Tensor, iteration: torch.Tensor, metrics: dict, task: str
    ) -> None:
        from safetensors.torch import save

        tensors = {
            "params": params.detach().float().contiguous().cpu(),
            "iteration": iteration.long().contiguous().cpu(),
            **{k: v.detach().float().contiguous().cpu() for k, v in metrics.items()},
        }
        data = save(tensors, metadata={"seed": str(seed), "task": task})
        atomic_write_bytes(data, self.shard_path(seed))

    def write_filtered(self, seed: int, reason: str) -> None:
        atomic_write_bytes(
            json.dumps({"seed": seed, "reason": reason}).encode(), self.filtered_path(seed)
        )

    def seeds(self) -> list[int]:
        """Seeds of the runs with a shard, sorted."""
        return sorted(int(p.stem.split("_")[1]) for p in self.runs_dir.glob("run_*.safetensors"))

    def filtered_seeds(self) -> list[int]:
        return sorted(
            int(p.name.split("_")[1].split(".")[0]) for p in self.runs_dir.glob("*.filtered.json")
        )

    def load(self, seeds: list[int] | None = None) -> RunData:
        """Read the shards of ``seeds`` (all runs by default) into memory."""
        from safetensors.torch import load_file

        manifest = self.manifest()
        metric_names = manifest["metrics"]
        num_params = ParamLayout.from_list(manifest["layout"]).num_params
        seeds = self.seeds() if seeds is None else seeds
        if not seeds:
            raise ValueError(f"the checkpoint dataset at {self.root} has no runs yet; run collect")
        params, iteration, metrics = [], [], {k: [] for k in metric_names}
        for seed in seeds:
            path = self.shard_path(seed)
            self._check_shard(path)
            try:
                shard = load_file(str(path))
            except Exception as err:
                raise CorruptShardError(
                    f"checkpoint shard {path} is corrupted ({err}); delete it and re-run the "
                    "same collect command to train that run again"
                ) from err
            if shard["params"].shape[-1] != num_params or any(k not in shard for k in metric_names):
                raise CorruptShardError(
                    f"checkpoint shard {path} does not match the manifest (expected {num_params} "
                    f"parameters and metrics {metric_names}); delete it and re-run collect"
                )
            params.append(shard["params"])
            iteration.append(shard["iteration"])
            for k in metric_names:
                metrics[k].append(shard[k])
        counts = {p.shape[0] for p in params}
        if len(counts) != 1:
            raise CorruptShardError(
                f"runs in {self.root} hold different numbers of checkpoints {counts}"
            )
        return RunData(
            torch.stack(params),
            torch.stack(iteration),
            {k: torch.stack(v) for k, v in metrics.items()},
            torch.tensor(seeds, dtype=torch.long),
        )
