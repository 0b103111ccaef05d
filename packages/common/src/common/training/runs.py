"""One training job = one run folder = one W&B run, also inside Hydra multiruns.

Every training entry point (DiT, G.pt, StyleGAN2, GANgealing) starts with :func:`start_job` and
runs its work inside the returned :class:`Job`:

- ``resume=<run dir or .ckpt>`` continues that run;
- in a multirun (``-m``), each job owns ``<sweep dir>/<subdir>``. Rerunning the same sweep into
  the same ``hydra.sweep.dir`` skips the jobs whose ``job.json`` says ``finished`` and resumes the
  others from their newest checkpoint, so an interrupted or failed sweep is finished by running its
  command again;
- a single run refuses a folder that already holds another run (``resume=`` continues it).

``job.json`` records the job's status (``running``, ``finished``, ``failed``), its Hydra job number
and overrides, the sweep folder and the W&B project, group, name and id. Leaving the ``Job``
context finishes the W&B run of the job (marked failed on an exception), so the next job of a
multirun starts its own run instead of writing into this one.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from common.checkpoint import write_json
from common.cli import hydra_job
from common.training.trainer import latest_checkpoint, resolve_resume, wandb_run_id

JOB_FILE = "job.json"
T = TypeVar("T")


class RunFolderError(ValueError):
    """A run folder that belongs to another run (the message says what to pass instead)."""


def read_job(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / JOB_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise RunFolderError(
            f"{path} is not valid JSON ({err}); delete it to let the job start again"
        ) from err


def write_job(run_dir: Path, record: dict[str, Any]) -> None:
    write_json(record, Path(run_dir) / JOB_FILE)


LOCK_FILE = ".lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def acquire_lock(run_dir: Path) -> Path:
    """Make this process the one writer of ``run_dir``: ``.lock`` holds its PID and host. A lock
    of a live process refuses the run, naming that process; a stale one (its process gone, same
    host) is taken over with a warning."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": _now()}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                other = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                time.sleep(0.2)  # being written by its owner right now
                try:
                    other = json.loads(path.read_text())
                except (OSError, json.JSONDecodeError):
                    other = {}
            pid, host = other.get("pid"), other.get("host")
            if host not in (None, me["host"]):
                raise RunFolderError(
                    f"{run_dir} is in use by process {pid} on host {host} (since "
                    f"{other.get('started')}); wait for it to end, or delete {path} if that "
                    "process is gone"
                ) from None
            if isinstance(pid, int) and pid != me["pid"] and _alive(pid):
                raise RunFolderError(
                    f"{run_dir} is in use by process {pid} (since {other.get('started')}): one "
                    "run writes to a folder at a time; wait for it to end or choose another "
                    "hydra.run.dir"
                ) from None
            print(f"warning: taking over the stale lock of process {pid} (no longer running)")
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return path
    raise RunFolderError(f"could not lock {run_dir}: another process keeps taking {path}")


def release_lock(path: Path | None) -> None:
    """Remove the lock if this process still holds it."""
    if path is None:
        return
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, json.JSONDecodeError):
        pass


def remove_orphans(run_dir: Path) -> None:
    """Delete the temporary files of writes that were killed before their rename (atomic
    writes name them ``.<file>.<random>.tmp``); this process holds the folder's lock."""
    for tmp in run_dir.rglob(".*.tmp"):
        if "wandb" in tmp.relative_to(run_dir).parts or not tmp.is_file():
            continue
        tmp.unlink()
        print(f"removed {tmp}, left by an interrupted write")


@dataclass
class Job:
    """A training job's folder, what it resumes from, and its W&B run (a context manager)."""

    run_dir: Path
    ckpt_path: Path | None = None
    skipped: bool = False
    record: dict[str, Any] = field(default_factory=dict)
    lock: Path | None = None

    def __enter__(self) -> Job:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        failed = exc_type is not None
        try:
            self._close(failed, exc_type, exc)
        finally:
            release_lock(self.lock)
        return False

    def _close(self, failed: bool, exc_type, exc) -> None:
        finish_wandb(exit_code=1 if failed else 0)
        if self.record and _is_rank_zero():
            self.record.update(status="failed" if failed else "finished", ended=_now())
            if failed:
                root = exc
                while root.__cause__ is not None:  # Hydra's InstantiationException wraps it
                    root = root.__cause__
                self.record["error"] = f"{type(root).__name__}: {root}"[:2000]
            else:
                self.record.pop("error", None)
            write_job(self.run_dir, self.record)


@dataclass
class TrainResult:
    """What every ``train`` command returns: its run folder, the resumable checkpoint, the file
    the next command reads (``export``: DiT's EMA weights, G.pt's checkpoint, a StyleGAN2
    generator, a congealer), the last sample grid if any, and the trained module."""

    run_dir: Path
    checkpoint: Path
    export: Path
    module: Any
    samples: Path | None = None


@dataclass
class Export:
    """What a ``train`` command writes for the next command: the file, the name the summary gives
    it, how to use it, and the last sample grid if any."""

    path: Path
    label: str
    usage: str = ""
    samples: Path | None = None


def fit_and_export(
    job: Job,
    trainer: Any,
    module: Any,
    export: Callable[[Any], Export],
    datamodule: Any = None,
) -> TrainResult:
    """The end of every ``train`` command: fit (continuing from ``job.ckpt_path``), write the
    resumable ``checkpoints/last.ckpt``, call ``export(trainer)`` on every rank (FSDP gathers its
    shards there; writing is rank zero's), print the summary and return the ``TrainResult``."""
    ckpt = job.ckpt_path
    job.record["fit_started"] = _now()  # from here on a failure is the run's, its folder kept
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt) if ckpt else None)
    checkpoint = job.run_dir / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(checkpoint, weights_only=False)
    out = export(trainer)
    if trainer.is_global_zero:
        print(f"run directory : {job.run_dir}")
        print(f"checkpoint    : {checkpoint} (step {trainer.global_step})")
        if out.samples is not None:
            print(f"samples       : {out.samples}")
        print(f"{out.label:<14}: {out.path}" + (f" ({out.usage})" if out.usage else ""))
    return TrainResult(job.run_dir, checkpoint, out.path, module, out.samples)


def finish_wandb(exit_code: int = 0) -> None:
    """Finish the active W&B run of this process, if any (``exit_code=1`` marks it failed)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=exit_code)


def _is_rank_zero() -> bool:
    """Global rank 0 before any trainer exists: ``RANK``/``SLURM_PROCID`` when a launcher set
    them, else node 0 and local rank 0 (processes that Lightning starts itself)."""
    for var in ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if var in os.environ:
            return int(os.environ[var]) == 0
    return int(os.environ.get("NODE_RANK", 0)) == 0 and int(os.environ.get("LOCAL_RANK", 0)) == 0


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def start_job(cfg: Any) -> Job:
    """Resolve the run folder of a training config, decide between a fresh start, a resume and a
    skip, and fill ``cfg.run_dir``, ``cfg.run_id`` and ``cfg.group`` (W&B group: the sweep folder's
    name in a multirun unless ``group=`` is given)."""
    from omegaconf import open_dict

    job = hydra_job()
    rank_zero = _is_rank_zero()
    with open_dict(cfg):
        ckpt_path = None
        if cfg.get("resume"):
            ckpt_path, run_dir = resolve_resume(cfg.resume)
            cfg.run_dir = str(run_dir)
        run_dir = Path(cfg.run_dir)
        lock = acquire_lock(run_dir) if rank_zero else None
        try:
            return _start_locked(cfg, run_dir, ckpt_path, job, lock)
        except BaseException:
            release_lock(lock)
            raise


def _start_locked(
    cfg: Any, run_dir: Path, ckpt_path: Path | None, job: dict | None, lock: Path | None
) -> Job:
    """``start_job`` once this process holds the folder's lock (rank 0) or follows rank 0."""
    multirun = bool(job and job["multirun"])
    rank_zero = lock is not None
    previous = read_job(run_dir)
    if previous is not None and not cfg.get("resume") and rank_zero:
        if not multirun:
            raise RunFolderError(
                f"{run_dir} already holds a run ({JOB_FILE}: {previous.get('status')}); pass "
                f"resume={run_dir} to continue it, or choose another hydra.run.dir"
            )
        if previous.get("overrides") != job["overrides"]:
            raise RunFolderError(
                f"{run_dir} belongs to another job of this sweep (overrides "
                f"{previous.get('overrides')}, now {job['overrides']}); rerun the same "
                "command to resume a sweep, or choose a new hydra.sweep.dir"
            )
        if previous.get("status") == "finished":
            print(f"job {job['num']}: finished before, skipping ({run_dir})")
            release_lock(lock)
            return Job(run_dir, skipped=True, record=previous)
        ckpt_path = latest_checkpoint(run_dir)
        where = f"from {ckpt_path}" if ckpt_path else "from the start (no checkpoint yet)"
        print(f"job {job['num']}: {previous.get('status')} before, resuming {where}")
    if multirun and cfg.get("group") is None:
        cfg.group = Path(job["sweep_dir"]).name
    if multirun and cfg.get("run_name"):
        cfg.run_name = job_name(cfg.run_name, job["overrides"], job["sweep_dir"])
    if cfg.get("run_id") is None:
        cfg.run_id = wandb_run_id(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {}
    if rank_zero:
        remove_orphans(run_dir)
        record = {
            "status": "running",
            "started": _now(),
            "job_num": job["num"] if job else None,
            "overrides": job["overrides"] if job else None,
            "sweep_dir": job["sweep_dir"] if job else None,
            "resumed_from": str(ckpt_path) if ckpt_path else None,
            "project": cfg.get("project"),
            "group": cfg.get("group"),
            "name": cfg.get("run_name"),
            "run_id": cfg.run_id,
        }
        write_job(run_dir, record)
    return Job(run_dir, ckpt_path=ckpt_path, record=record, lock=lock)


def expected_jobs(root: str | os.PathLike) -> list[list[str]] | None:
    """The overrides of every job of the Hydra multirun whose folder is ``root``, in job-number
    order (the basic sweeper's expansion of ``multirun.yaml``); ``None`` without that file."""
    path = Path(root) / "multirun.yaml"
    if not path.is_file():
        return None
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    hydra_cfg = OmegaConf.load(path).hydra
    params = hydra_cfg.get("sweeper", {}).get("params") or {}
    arguments = [f"{k}={v}" for k, v in params.items()] + list(hydra_cfg.overrides.task)
    overrides = OverridesParser.create().parse_overrides(arguments)
    return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


def swept_overrides(overrides: list[str], sweep_dir: str | os.PathLike) -> list[str]:
    """The overrides of ``overrides`` (one job's) whose value differs between the sweep's jobs."""
    jobs = expected_jobs(sweep_dir) or []
    values: dict[str, set[str]] = {}
    for job in jobs:
        for item in job:
            key, _, value = item.partition("=")
            values.setdefault(key, set()).add(value)
    return [o for o in overrides if len(values.get(o.partition("=")[0], ())) > 1]


def job_name(run_name: str, overrides: list[str], sweep_dir: str | os.PathLike) -> str:
    """``run_name`` plus the swept overrides it does not already show (``DiT-B-4-digits`` for
    ``model=b patch=4``; ``gpt-mlp_digits-test_loss-model=neuron`` for a sweep over ``model``)."""
    tokens = {t.lower() for t in str(run_name).replace("/", "-").split("-")}
    extra = [
        o
        for o in swept_overrides(overrides, sweep_dir)
        if o.partition("=")[2].lower() not in tokens
    ]
    return "-".join([str(run_name), *extra])


def run_job(cfg: Any, fit: Callable[[Any, Job], T]) -> T | None:
    """``fit(cfg, job)`` inside the job of ``cfg`` (:func:`start_job`); ``None`` when a rerun
    multirun skips the job because it finished before."""
    job = start_job(cfg)
    if job.skipped:
        return None
    with job:
        return fit(cfg, job)
