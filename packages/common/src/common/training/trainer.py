"""Training utilities shared by the Lightning modules: resumable sampling and checkpoint I/O."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from torch.utils.data import Sampler

from common.checkpoint import atomic_save, safe_load


class InfiniteSampler(Sampler[int]):
    """Endless shuffled indices whose order is a pure function of ``(seed, position)``.

    Global position ``p`` reads epoch ``p // n`` (a permutation seeded by ``seed + epoch``) at
    offset ``p % n``. Rank ``r`` of ``world_size`` takes positions ``start + r``,
    ``start + r + world_size``, ...
    Restarting with ``start`` = samples already consumed by all ranks therefore continues exactly
    where an interrupted run stopped.
    """

    def __init__(
        self,
        dataset_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
        shuffle: bool = True,
    ) -> None:
        if dataset_size <= 0:
            raise ValueError("cannot sample from an empty dataset")
        self.n = dataset_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start = start
        self.shuffle = shuffle

    def _order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        g = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.n, generator=g)

    def __iter__(self) -> Iterator[int]:
        position = self.start + self.rank
        epoch, order = -1, None
        while True:
            e, offset = divmod(position, self.n)
            if e != epoch:
                epoch, order = e, self._order(e)
            yield int(order[offset])
            position += self.world_size


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """Seed for the randomness of one training step (noise, timesteps, label dropout, flips).

    Making every step's randomness a function of ``(seed, step, rank)`` lets a resumed run draw
    exactly the numbers the uninterrupted run would have drawn.
    """
    return (seed * 1_000_003 + step * 4099 + rank) % (2**63 - 1)


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O with atomic local writes and ``weights_only=True`` reads."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        from common.checkpoint import require_finite_state

        # Never a NaN checkpoint: weights (with the EMA) and optimizer state must be finite.
        weights = {k: checkpoint.get(k) for k in ("state_dict", "optimizer_states")}
        require_finite_state(weights, str(path))
        if "://" in str(path):  # remote filesystems: Lightning's fsspec transaction
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_save(checkpoint, path, check_finite=False)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        if "://" in str(path):
            return super().load_checkpoint(path, map_location, weights_only=True)
        return safe_load(os.fspath(path), map_location=map_location or "cpu")


def is_sharded_checkpoint(path: Path) -> bool:
    """A FSDP ``state_dict_type=sharded`` checkpoint: a folder of shards and Lightning's meta.pt."""
    return path.is_dir() and (path / "meta.pt").is_file()


def readable_checkpoint(path: Path) -> bool:
    """A sharded folder with its meta.pt, or a non-empty ``torch.save`` zip archive whose
    directory reads (atomic writes leave either the whole file or none; this catches files
    truncated or damaged after the fact without loading them)."""
    if is_sharded_checkpoint(path):
        return True
    if not path.is_file() or path.stat().st_size == 0:
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return bool(archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _step_of(path: Path) -> int:
    digits = "".join(ch for ch in path.stem if ch.isdigit())
    return int(digits) if digits else -1


def latest_checkpoint(run_dir: Path, say=print) -> Path | None:
    """``checkpoints/last.ckpt`` or, when it is missing or unreadable (a job killed during its
    first save, a damaged file), the readable ``stepNNNNNNN.ckpt`` of the highest step, saying
    so with ``say``; ``None`` when there is none."""
    folder = Path(run_dir) / "checkpoints"
    last = folder / "last.ckpt"
    if readable_checkpoint(last):
        return last
    periodic = sorted(folder.glob("step*.ckpt"), key=_step_of, reverse=True)
    for candidate in periodic:
        if readable_checkpoint(candidate):
            why = "is unreadable" if last.exists() else "is missing"
            say(f"note: {last} {why}; resuming from {candidate.name}, the newest readable one")
            return candidate
    return None


def resolve_resume(resume: str | os.PathLike) -> tuple[Path, Path]:
    """``resume=`` (run directory, ``.ckpt`` file or sharded folder) -> (checkpoint, run dir)."""
    path = Path(resume).expanduser()
    if path.is_dir() and not is_sharded_checkpoint(path):
        ckpt = latest_checkpoint(path)
        if ckpt is None:
            raise FileNotFoundError(
                f"cannot resume: no readable checkpoint in {path / 'checkpoints'}. Pass "
                "resume=<run dir> (containing checkpoints/last.ckpt) or resume=<path to a .ckpt>"
            )
    else:
        ckpt = path
        if not (ckpt.is_file() or is_sharded_checkpoint(ckpt)):
            raise FileNotFoundError(
                f"cannot resume: no checkpoint at {ckpt}. Pass resume=<run dir> (containing "
                "checkpoints/last.ckpt) or resume=<path to a .ckpt file>"
            )
        if not readable_checkpoint(ckpt):
            raise ValueError(
                f"cannot resume from {ckpt}: not a readable checkpoint (empty, truncated or not a "
                "torch.save archive); pass resume=<run dir> to take its newest readable one"
            )
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    return ckpt, run_dir


def wandb_run_id(run_dir: Path, timeout_s: float = 60.0) -> str:
    """The W&B run id of this run directory (``run_id.txt``), created on first use.

    Every process of a run calls this and must get the same id. Lightning's DDP and FSDP launchers
    start the other ranks from rank 0 after it has created the file, but processes started
    together (SLURM, torchrun, several nodes on a shared file system) may race: the id is written
    to a temporary file and published with ``os.link``, which fails when the file exists, so the
    first process wins and every process reads the winner's id (``logger/wandb.yaml`` passes it
    as ``id`` with ``resume: allow``, so a resumed run continues the same W&B run).
    """
    path = run_dir / "run_id.txt"
    if not path.is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        new_id = uuid.uuid4().hex[:12] + "\n"
        fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=".run_id.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(new_id)
            os.link(tmp, path)
        except FileExistsError:
            pass
        except OSError:  # no hard links on this file system: exclusive create, then write
            with contextlib.suppress(FileExistsError), open(path, "x") as f:
                f.write(new_id)
        finally:
            os.unlink(tmp)
    deadline = time.monotonic() + timeout_s
    while not (run_id := path.read_text().strip()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} is empty: delete it to start a new W&B run")
        time.sleep(0.1)
    return run_id


def build_trainer(cfg: Any, extra_hparams: dict[str, Any] | None = None) -> Any:
    """The ``lightning.Trainer`` of a training config: ``cfg.trainer`` with the loggers of
    ``cfg.logger``, the callbacks of ``cfg.callbacks`` plus the NaN/inf guard (``nan_policy``)
    and the log flush on failure, ``cfg.strategy`` when present, safe checkpoint I/O,
    checkpointing on when a ``ModelCheckpoint`` is configured; every logger gets the resolved
    config (plus ``extra_hparams``) as hyper-parameters."""
    import hydra
    import lightning as L
    from omegaconf import OmegaConf

    from common.errors import require_positive_int
    from common.training.guards import FlushLogsOnError, NonFiniteGuard

    require_positive_int("trainer.max_steps", cfg.trainer.get("max_steps"))
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values()]
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    callbacks += [NonFiniteGuard(cfg.get("nan_policy", "stop")), FlushLogsOnError()]
    has_ckpt = any(isinstance(c, L.pytorch.callbacks.ModelCheckpoint) for c in callbacks)
    extra = {"strategy": hydra.utils.instantiate(cfg.strategy)} if cfg.get("strategy") else {}
    try:
        trainer = hydra.utils.instantiate(
            cfg.trainer,
            logger=loggers or False,
            callbacks=callbacks,
            plugins=[SafeCheckpointIO()],
            enable_checkpointing=has_ckpt,
            **extra,
        )
    except Exception as err:  # Lightning checks its arguments with TypeError/ValueError
        from common.errors import root_cause

        cause = root_cause(err)
        if not isinstance(cause, (TypeError, ValueError)):
            raise
        raise ValueError(
            f"Lightning refused the trainer settings ({cause}); check the trainer.* values "
            "(python -m <command> --cfg job prints them)"
        ) from None

    hparams = {
        **OmegaConf.to_container(cfg, resolve=True),
        **job_hparams(),
        **(extra_hparams or {}),
    }
    for logger in loggers:
        logger.log_hyperparams(hparams)
    return trainer


def resumable_loader(
    dataset: Any, batch_size: int, seed: int, trainer: Any = None, num_workers: int = 0
) -> Any:
    """An endless ``DataLoader`` over ``dataset``, sharded by rank (``InfiniteSampler``), that
    starts where a run at ``trainer.global_step`` left off, so a resumed job reads the batches
    the uninterrupted one would have read."""
    from torch.utils.data import DataLoader

    rank, world, consumed = 0, 1, 0
    if trainer is not None:
        rank, world = trainer.global_rank, trainer.world_size
        micro_batches = trainer.global_step * trainer.accumulate_grad_batches
        consumed = micro_batches * batch_size * world
    sampler = InfiniteSampler(len(dataset), seed, rank, world, start=consumed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        drop_last=True,
        persistent_workers=num_workers > 0,
    )


def job_hparams() -> dict[str, Any]:
    """The Hydra job number, overrides and sweep folder, for the loggers' hyper-parameters."""
    from common.cli import hydra_job

    job = hydra_job()
    if job is None:
        return {}
    return {"hydra_job": {k: job[k] for k in ("num", "overrides", "sweep_dir")}}
