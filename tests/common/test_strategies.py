"""Strategy configs (auto, DDP, FSDP) and the EMA under FSDP sharding (thesis Sec. 2.4).

FSDP runs on the CPU here with gloo and ``device_id=cpu`` (torch's FSDP does; Lightning's
``FSDPStrategy`` refuses ``accelerator=cpu``), in two spawned processes.
"""

from __future__ import annotations

import types
from pathlib import Path

import hydra
import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import InstantiationException
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

from common.training.ema import EMA
from common.training.strategies import full_state_dict, import_class, module_wrap_policy
from diffusion_transformer.models import DiT, DiTBlock

TINY_DIT = dict(
    input_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=2, num_heads=2, num_classes=10
)
DIT_UNITS = ["diffusion_transformer.models.DiT", "diffusion_transformer.models.DiTBlock"]


def compose_train(tmp_path: Path, *overrides: str):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("diffusion_transformer.conf", version_base="1.3"):
            return compose("train", overrides=[f"run_dir={tmp_path}", *overrides])
    finally:
        GlobalHydra.instance().clear()


# ----------------------------------------------------------------------------- policy builder
def test_wrap_policy_is_built_from_class_paths():
    policy = module_wrap_policy(DIT_UNITS)
    assert policy._module_classes == {DiT, DiTBlock}
    assert module_wrap_policy([DiTBlock])._module_classes == {DiTBlock}
    assert module_wrap_policy([]) is None  # no activation checkpointing


def test_wrap_policy_errors_name_the_fix():
    with pytest.raises(ImportError, match="full class paths"):
        module_wrap_policy(["DiTBlock"])
    with pytest.raises(ImportError, match="diffusion_transformer.models.NoSuchBlock"):
        import_class("diffusion_transformer.models.NoSuchBlock")
    with pytest.raises(TypeError, match="not a torch.nn.Module class"):
        import_class("diffusion_transformer.models.dit_flops")


# ----------------------------------------------------------------------------- configs
def test_auto_is_the_default_strategy(tmp_path):
    cfg = compose_train(tmp_path)
    assert hydra.utils.instantiate(cfg.strategy) == "auto"
    assert cfg.tf32 is True


def test_ddp_config_instantiates_and_builds_a_cpu_trainer(tmp_path):
    cfg = compose_train(tmp_path, "strategy=ddp", "trainer.devices=2")
    strategy = hydra.utils.instantiate(cfg.strategy)
    assert isinstance(strategy, DDPStrategy)
    assert strategy._ddp_kwargs == {
        "find_unused_parameters": False,
        "gradient_as_bucket_view": True,
        "static_graph": False,
    }
    trainer = hydra.utils.instantiate(cfg.trainer, strategy=strategy, logger=False)
    assert trainer.world_size == 2 and trainer.strategy is strategy


@pytest.mark.parametrize(
    "overrides,state_dict_type,checkpointed",
    [
        ([], "full", set()),
        (["strategy.state_dict_type=sharded"], "sharded", set()),
        (
            [
                "strategy.activation_checkpointing_policy.module_classes="
                "[diffusion_transformer.models.DiTBlock]"
            ],
            "full",
            {DiTBlock},
        ),
    ],
)
def test_fsdp_config_instantiates(tmp_path, overrides, state_dict_type, checkpointed):
    cfg = compose_train(tmp_path, "trainer=gpu", "strategy=fsdp", *overrides)
    assert cfg.trainer.precision == "bf16-mixed"
    strategy = hydra.utils.instantiate(cfg.strategy)
    assert type(strategy) is FSDPStrategy
    assert {DiT, DiTBlock} <= strategy.kwargs["auto_wrap_policy"]._module_classes
    assert strategy.kwargs["use_orig_params"] is True
    assert strategy._state_dict_type == state_dict_type
    ac_policy = strategy._activation_checkpointing_kwargs.get("auto_wrap_policy")
    assert (ac_policy._module_classes if ac_policy else set()) == checkpointed
    # Lightning refuses FSDP on the CPU when the Trainer is built, with a message naming the fix.
    cpu = compose_train(tmp_path, "strategy=fsdp", *overrides)
    with pytest.raises(InstantiationException, match="requires a GPU accelerator"):
        hydra.utils.instantiate(
            cpu.trainer, strategy=hydra.utils.instantiate(cpu.strategy), logger=False
        )


# ----------------------------------------------------------------------------- EMA errors
def test_ema_update_names_a_shape_mismatch():
    ema = EMA(DiT(**TINY_DIT), decay=0.9)
    with pytest.raises(ValueError, match="'pos_embed' has shape .* auto-wrap policy"):
        ema.update(DiT(**{**TINY_DIT, "hidden_size": 64}))
    with pytest.raises(ValueError, match="different parameter lists"):
        ema.update(DiT(**{**TINY_DIT, "depth": 3}))


# ----------------------------------------------------------------------------- EMA under FSDP
class _DiTWithEMA(torch.nn.Module):
    """The parts of DiTModule that FSDP sees: the model and its EMA copy, one root forward."""

    def __init__(self, decay: float) -> None:
        super().__init__()
        self.model = DiT(**TINY_DIT)
        self.ema = EMA(self.model, decay)

    def forward(self, x, t, y):
        return self.model(x, t, y)


def _batch(step: int, rank: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1000 * step + rank)
    x = torch.randn(4, 1, 8, 8, generator=g)
    return x, torch.randint(0, 1000, (4,), generator=g), torch.randint(0, 10, (4,), generator=g)


def _train(holder: _DiTWithEMA, forward, steps: int, ranks: list[int]) -> None:
    """SGD steps on the mean loss over ``ranks``' batches, each followed by an EMA update (SGD:
    summation-order differences between the sharded and single runs stay at rounding level)."""
    opt = torch.optim.SGD(holder.model.parameters(), lr=0.1)
    for step in range(steps):
        x, t, y = (
            torch.cat(parts) for parts in zip(*(_batch(step, r) for r in ranks), strict=True)
        )
        loss = (forward(x, t, y) - 1.0).square().mean()  # non-zero gradients from step 1
        opt.zero_grad()
        loss.backward()
        opt.step()
        holder.ema.update(holder.model)


def _fsdp_worker(rank: int, world: int, tmp: str) -> None:
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    dist.init_process_group("gloo", init_method=f"file://{tmp}/pg", rank=rank, world_size=world)
    torch.manual_seed(0)
    holder = _DiTWithEMA(decay=0.5)
    root = FSDP(
        holder,
        auto_wrap_policy=module_wrap_policy(DIT_UNITS),
        device_id=torch.device("cpu"),
        use_orig_params=True,
    )
    shards = [tuple(p.shape) for p in holder.ema.module.parameters()]
    _train(holder, root, steps=3, ranks=[rank])  # FSDP averages the ranks' gradients
    x, t, y = _batch(99, 0)
    with torch.no_grad():
        sample = holder.ema.module(x, t, y)  # every rank runs the forward: all-gathers
    state = full_state_dict(
        types.SimpleNamespace(strategy=types.SimpleNamespace(model=root), is_global_zero=rank == 0)
    )
    # Without DiT as a unit the model's and the EMA's non-block weights share the root's flat
    # parameter and are sharded together: EMA.update must refuse the mismatched pairs.
    torch.manual_seed(0)
    blocks_only = _DiTWithEMA(decay=0.5)
    FSDP(
        blocks_only,
        auto_wrap_policy=module_wrap_policy(DIT_UNITS[1:]),
        device_id=torch.device("cpu"),
        use_orig_params=True,
    )
    try:
        blocks_only.ema.update(blocks_only.model)
        error = ""
    except ValueError as err:
        error = str(err)
    torch.save(
        {"state": state, "sample": sample, "shards": shards, "error": error},
        f"{tmp}/rank{rank}.pt",
    )
    dist.destroy_process_group()


def test_sharded_ema_equals_the_unsharded_ema(tmp_path):
    mp.spawn(_fsdp_worker, args=(2, str(tmp_path)), nprocs=2)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    # Each rank holds flat slices of the EMA: the update really ran on shards.
    full_numel = sum(p.numel() for p in DiT(**TINY_DIT).parameters())
    assert sum(sum(torch.Size(s).numel() for s in r["shards"]) for r in results) == full_numel
    assert results[0]["shards"] != results[1]["shards"]
    assert results[1]["state"] == {}  # gathered on rank 0 only

    torch.manual_seed(0)
    reference = _DiTWithEMA(decay=0.5)
    init = {k: v.clone() for k, v in reference.state_dict().items()}
    _train(reference, reference, steps=3, ranks=[0, 1])  # one process, the global batch
    expected = reference.state_dict()
    gathered = results[0]["state"]
    assert list(gathered) == list(expected)  # same keys as one process, no wrapper prefixes
    for key, value in expected.items():
        torch.testing.assert_close(gathered[key], value, rtol=1e-5, atol=1e-6)
    ema_keys = [k for k in expected if k.startswith("ema.module.")]
    assert all(
        not torch.equal(init[k], expected[k]) for k in ema_keys if k != "ema.module.pos_embed"
    )
    x, t, y = _batch(99, 0)
    with torch.no_grad():
        torch.testing.assert_close(results[0]["sample"], reference.ema.module(x, t, y))
    torch.testing.assert_close(results[1]["sample"], results[0]["sample"])
    errors = [r["error"] for r in results]
    assert any("shape" in e and "auto-wrap policy" in e for e in errors), errors


def test_full_state_dict_of_an_unwrapped_module(tmp_path):
    module = L.LightningModule()
    module.layer = torch.nn.Linear(2, 2)
    trainer = types.SimpleNamespace(
        strategy=types.SimpleNamespace(model=module), is_global_zero=True, lightning_module=module
    )
    assert set(full_state_dict(trainer)) == {"layer.weight", "layer.bias"}
    trainer.is_global_zero = False
    assert full_state_dict(trainer) == {}
