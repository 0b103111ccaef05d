"""Multi-process training through the real entry point on the CPU (gloo, two processes).

DDP runs as users run it (``strategy=ddp trainer.devices=2``). FSDP runs the repository's
``strategy=fsdp`` config with one test-only change: Lightning's ``FSDPStrategy`` refuses
``accelerator=cpu``, while torch's FSDP shards on the CPU when given ``device_id=cpu``, so the
probe module below subclasses the strategy to do that. A probe callback records, on every rank,
the batches seen, the W&B run id and every checkpoint write.
"""

from __future__ import annotations

import csv
import multiprocessing
from pathlib import Path

import pytest
import torch

from common.checkpoint import safe_load
from common.training import InfiniteSampler, wandb_run_id
from diffusion_transformer.data import DigitsDataModule
from tests.integration.conftest import TINY, run_cli

PROBE = """
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.strategies.fsdp import _setup_activation_checkpointing
from torch.distributed.fsdp import FullyShardedDataParallel


class Probe(L.Callback):
    '''Saves what rank r saw to <dirpath>/rank<r>.pt, its checkpoint writes to saves<r>.txt.'''

    def __init__(self, dirpath, run_id):
        self.dirpath, self.run_id = Path(dirpath), run_id
        self.batches = []

    def setup(self, trainer, pl_module, stage):
        self.dirpath.mkdir(parents=True, exist_ok=True)
        log = self.dirpath / f"saves{trainer.global_rank}.txt"
        io = trainer.strategy.checkpoint_io
        save = io.save_checkpoint

        def recorded(checkpoint, path, storage_options=None):
            with open(log, "a") as f:
                f.write(f"{path}\\n")
            return save(checkpoint, path, storage_options)

        io.save_checkpoint = recorded

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append(batch[0].detach().cpu().clone())

    def on_train_end(self, trainer, pl_module):
        info = {
            "batches": torch.stack(self.batches),
            "run_id": self.run_id,
            "model": type(pl_module.train_model).__name__,
            "ema_numel": sum(p.numel() for p in pl_module.ema.module.parameters()),
        }
        torch.save(info, self.dirpath / f"rank{trainer.global_rank}.pt")


class CPUFSDPStrategy(FSDPStrategy):
    '''The FSDP strategy with torch's CPU device id (gloo), which Lightning does not offer.'''

    def _setup_model(self, model):
        model = FullyShardedDataParallel(
            module=model,
            cpu_offload=self.cpu_offload,
            mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy,
            device_id=torch.device("cpu"),
            **self.kwargs,
        )
        _setup_activation_checkpointing(model, self._activation_checkpointing_kwargs)
        return model

    def optimizer_state(self, optimizer):
        # torch's full optimizer state dict with offload_to_cpu=True (Lightning's setting) returns
        # views of one reused gather buffer when the compute device is the CPU, since .cpu() does
        # not copy there: exp_avg comes back equal to exp_avg_sq. On the CPU, gather without
        # offloading (on GPUs .cpu() copies and Lightning's setting is right).
        if self._state_dict_type != "full":
            return super().optimizer_state(optimizer)
        from torch.distributed.fsdp import (
            FullOptimStateDictConfig,
            FullStateDictConfig,
            OptimStateKeyType,
            StateDictType,
        )

        optimizer = getattr(optimizer, "_optimizer", optimizer)
        with FullyShardedDataParallel.state_dict_type(
            self.model,
            StateDictType.FULL_STATE_DICT,
            FullStateDictConfig(offload_to_cpu=False, rank0_only=True),
            FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=True),
        ):
            state = FullyShardedDataParallel.optim_state_dict(self.model, optimizer)
            if self.global_rank == 0:
                state = FullyShardedDataParallel.rekey_optim_state_dict(
                    state, OptimStateKeyType.PARAM_ID, self.model
                )
            return state
"""

DIGITS = ["batch_size=8", "ema_decay=0.5", "logger=csv", "callbacks=none"]
ENV = {"OMP_NUM_THREADS": "1"}


def distributed_run(tmp_path: Path, name: str, *overrides: str, probe: str = "probe"):
    """``python -m diffusion_transformer.train`` on two CPU processes; returns the run dir."""
    (tmp_path / "dist_probe.py").write_text(PROBE)
    run_cli(
        "diffusion_transformer.train",
        *TINY,
        *DIGITS,
        "trainer.devices=2",
        "trainer.log_every_n_steps=1",
        "+callbacks.probe._target_=dist_probe.Probe",
        f"+callbacks.probe.dirpath={tmp_path / probe}",
        "+callbacks.probe.run_id=${run_id}",
        f"hydra.run.dir={name}",
        *overrides,
        cwd=tmp_path,
        env_extra={**ENV, "PYTHONPATH": str(tmp_path)},
    )
    return tmp_path / name


def read_losses(run: Path) -> dict[int, str]:
    with open(run / "csv" / "metrics.csv") as f:
        return {int(r["step"]): r["train/loss"] for r in csv.DictReader(f) if r["train/loss"]}


def expected_batches(start_step: int, steps: int, rank: int) -> torch.Tensor:
    """The image batches rank ``rank`` of 2 must read (InfiniteSampler shards by rank)."""
    dm = DigitsDataModule(image_size=8, batch_size=8, seed=0)
    dataset = dm.build_dataset()
    sampler = iter(InfiniteSampler(len(dataset), 0, rank, 2, start=start_step * 8 * 2))
    return torch.stack(
        [torch.stack([dataset[next(sampler)][0] for _ in range(8)]) for _ in range(steps)]
    )


def test_ddp_on_two_processes_then_resume(tmp_path):
    run = distributed_run(tmp_path, "run", "strategy=ddp", "trainer.max_steps=3")
    probe = [torch.load(tmp_path / "probe" / f"rank{r}.pt") for r in range(2)]
    # Each rank read its own shard of every global batch.
    for rank in range(2):
        assert torch.equal(probe[rank]["batches"], expected_batches(0, 3, rank))
    assert not torch.equal(probe[0]["batches"], probe[1]["batches"])
    # Only rank 0 wrote the checkpoint.
    assert (tmp_path / "probe" / "saves0.txt").read_text().split() == [
        str(run / "checkpoints" / "last.ckpt")
    ]
    assert not (tmp_path / "probe" / "saves1.txt").exists()
    ckpt = safe_load(run / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 3
    ema = safe_load(run / "checkpoints" / "ema.pt")
    assert ema["final_layer.linear.weight"].abs().sum() > 0  # zero at init (adaLN-Zero)
    for key, value in ema.items():
        assert torch.equal(value, ckpt["state_dict"][f"ema.module.{key}"]), key
    # Both ranks used the run id that rank 0 created before starting rank 1.
    run_id = (run / "run_id.txt").read_text().strip()
    assert len(run_id) == 12 and [p["run_id"] for p in probe] == [run_id, run_id]

    # Resume the interrupted run: same run directory and W&B id, data continues where it stopped.
    distributed_run(
        tmp_path,
        "ignored",
        "strategy=ddp",
        "trainer.max_steps=5",
        f"resume={run}",
        probe="probe_resumed",
    )
    resumed = [torch.load(tmp_path / "probe_resumed" / f"rank{r}.pt") for r in range(2)]
    assert [p["run_id"] for p in resumed] == [run_id, run_id]
    assert (run / "run_id.txt").read_text().strip() == run_id
    for rank in range(2):
        assert torch.equal(resumed[rank]["batches"], expected_batches(3, 2, rank))
    assert safe_load(run / "checkpoints" / "last.ckpt")["global_step"] == 5
    steps = [line.split(",")[1] for line in (run / "csv" / "metrics.csv").read_text().split()[1:]]
    assert steps == ["0", "1", "2", "3", "4"]


def _call_run_id(run_dir: str, barrier, queue) -> None:
    barrier.wait()
    queue.put(wandb_run_id(Path(run_dir)))


def test_run_id_is_created_once_when_processes_start_together(tmp_path):
    ctx = multiprocessing.get_context("fork")
    for attempt in range(3):
        run_dir = tmp_path / f"run{attempt}"
        barrier, queue = ctx.Barrier(6), ctx.Queue()
        procs = [
            ctx.Process(target=_call_run_id, args=(str(run_dir), barrier, queue)) for _ in range(6)
        ]
        for p in procs:
            p.start()
        ids = [queue.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        assert len(set(ids)) == 1 and ids[0] == (run_dir / "run_id.txt").read_text().strip()
        assert [p.name for p in run_dir.iterdir()] == ["run_id.txt"]  # no temporary files left
    assert wandb_run_id(run_dir) == ids[0]


FSDP = ["strategy=fsdp", "strategy._target_=dist_probe.CPUFSDPStrategy", "model.depth=2"]


@pytest.fixture(scope="module")
def fsdp_uninterrupted(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("fsdp")
    return distributed_run(tmp, "straight", *FSDP, "trainer.max_steps=4")


@pytest.mark.parametrize(
    "state_dict_type", ["sharded", pytest.param("full", marks=pytest.mark.slow)]
)
def test_fsdp_resume_equals_an_uninterrupted_run(tmp_path, fsdp_uninterrupted, state_dict_type):
    straight = fsdp_uninterrupted
    sharding = [*FSDP, f"strategy.state_dict_type={state_dict_type}"]
    run = distributed_run(tmp_path, "run", *sharding, "trainer.max_steps=2")
    last = run / "checkpoints" / "last.ckpt"
    assert last.is_dir() if state_dict_type == "sharded" else last.is_file()
    probe = [torch.load(tmp_path / "probe" / f"rank{r}.pt") for r in range(2)]
    # The loss ran through the FSDP wrapper; each rank holds half of the EMA.
    full_numel = sum(v.numel() for v in safe_load(run / "checkpoints" / "ema.pt").values())
    assert [p["model"] for p in probe] == ["FullyShardedDataParallel"] * 2
    assert sum(p["ema_numel"] for p in probe) == full_numel
    assert all(p["ema_numel"] < full_numel for p in probe)

    distributed_run(tmp_path, "ignored", *sharding, "trainer.max_steps=4", f"resume={run}")
    a = safe_load(straight / "checkpoints" / "ema.pt")
    b = safe_load(run / "checkpoints" / "ema.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert a["final_layer.linear.weight"].abs().sum() > 0
    assert read_losses(run) == read_losses(straight) and len(read_losses(run)) == 4
