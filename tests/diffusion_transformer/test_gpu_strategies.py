"""FSDP and throughput on a real GPU (marker `gpu`): the strategy config trains, the sharded EMA
equals the single-device EMA, a sharded checkpoint resumes exactly, and MFU is logged."""

from __future__ import annotations

import pytest
import torch

from common.checkpoint import safe_load
from common.training.throughput import ThroughputMonitor
from diffusion_transformer.training import train

pytestmark = pytest.mark.gpu

TINY_GPU = [
    "trainer=gpu",
    "trainer.devices=1",
    "model.depth=2",
    "model.hidden_size=64",
    "model.num_heads=4",
    "batch_size=16",
    "logger=none",
    "callbacks=none",
    "ema_decay=0.5",  # large EMA steps: a wrong update would show
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]
FP32 = ["trainer.precision=32-true", "tf32=false"]


def _ema(result) -> dict[str, torch.Tensor]:
    return safe_load(result.export)


def _assert_states_close(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for key in a:
        torch.testing.assert_close(a[key].float(), b[key].float(), rtol=1e-4, atol=1e-5, msg=key)


def test_fsdp_ema_equals_the_single_device_ema(compose_train, tmp_path):
    plain = train(compose_train(*TINY_GPU, *FP32, "trainer.max_steps=6", f"run_dir={tmp_path}/a"))
    fsdp = train(
        compose_train(
            *TINY_GPU, *FP32, "strategy=fsdp", "trainer.max_steps=6", f"run_dir={tmp_path}/b"
        )
    )
    assert type(fsdp.module.trainer.strategy).__name__ == "FSDPStrategy"
    _assert_states_close(_ema(fsdp), _ema(plain))
    full = safe_load(fsdp.checkpoint)["state_dict"]  # full state dict: one file, official keys
    assert any(k.startswith("ema.module.blocks.1.") for k in full)


def test_fsdp_sharded_checkpoint_resumes_the_run(compose_train, tmp_path):
    sharded = [*TINY_GPU, *FP32, "strategy=fsdp", "strategy.state_dict_type=sharded"]
    straight = train(compose_train(*sharded, "trainer.max_steps=4", f"run_dir={tmp_path}/a"))
    first = train(compose_train(*sharded, "trainer.max_steps=2", f"run_dir={tmp_path}/b"))
    assert (first.checkpoint / "meta.pt").is_file()  # a folder of shards, not one file
    resumed = train(
        compose_train(*sharded, "trainer.max_steps=4", f"resume={tmp_path}/b/checkpoints/last.ckpt")
    )
    assert resumed.module.trainer.global_step == 4
    _assert_states_close(_ema(resumed), _ema(straight))


def test_fsdp_bf16_with_activation_checkpointing_trains(compose_train, tmp_path):
    result = train(
        compose_train(
            *TINY_GPU,
            "strategy=fsdp",
            "strategy.activation_checkpointing_policy.module_classes="
            "[diffusion_transformer.models.DiTBlock]",
            "trainer.max_steps=4",
            f"run_dir={tmp_path}",
        )
    )
    ema = _ema(result)
    assert all(torch.isfinite(v).all() for v in ema.values())
    assert ema["blocks.0.attn.qkv.weight"].dtype == torch.float32  # the EMA stays in float32


def test_throughput_monitor_logs_mfu_on_gpu(compose_train, tmp_path):
    result = train(
        compose_train(
            *TINY_GPU,
            "callbacks=default",
            "~callbacks.samples",
            "~callbacks.eval",
            "callbacks.throughput.every_n_steps=5",
            "trainer.max_steps=11",
            f"run_dir={tmp_path}",
        )
    )
    monitor = next(c for c in result.module.trainer.callbacks if isinstance(c, ThroughputMonitor))
    metrics = monitor.last_metrics
    assert metrics["perf/images_per_sec"] > 0 and metrics["perf/peak_mem_gib"] > 0
    assert 0 < metrics["perf/mfu"] < 1
