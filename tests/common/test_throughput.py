"""Throughput callback: images/s, MFU from the real model's flops, dense peaks of the H200."""

from __future__ import annotations

import csv

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from common.training.throughput import ThroughputMonitor, peak_flops, precision_dtype
from diffusion_transformer.training import train
from tests.diffusion_transformer.test_train import TINY  # the tiny CPU run of the wiring tests


def compose_train(*overrides: str):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("diffusion_transformer.conf", version_base="1.3"):
            return compose("train", overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


def perf_rows(run_dir) -> list[dict[str, str]]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return [r for r in csv.DictReader(f) if r.get("perf/images_per_sec")]


def test_a_cpu_run_logs_images_per_sec_and_mfu_with_a_given_peak(tmp_path):
    result = train(
        compose_train(
            *TINY,
            "trainer.max_steps=5",
            f"run_dir={tmp_path}",
            "+callbacks.throughput._target_=common.training.throughput.ThroughputMonitor",
            "+callbacks.throughput.every_n_steps=2",
            "+callbacks.throughput.peak_flops=1.0e12",
        )
    )
    rows = perf_rows(tmp_path)
    # Logged after optimizer steps 2 and 4, at Lightning's steps of those batches' losses.
    assert [int(r["step"]) for r in rows] == [1, 3]
    flops = result.module.flops_per_sample()
    for row in rows:
        images_per_sec = float(row["perf/images_per_sec"])
        assert images_per_sec > 0
        assert float(row["perf/mfu"]) == pytest.approx(images_per_sec * flops / 1e12, rel=1e-6)
        assert row.get("perf/peak_mem_gib", "") == ""  # CUDA only


def test_mfu_is_omitted_when_the_peak_is_unknown(tmp_path):
    train(
        compose_train(
            *TINY,
            "trainer.max_steps=3",
            f"run_dir={tmp_path}",
            "+callbacks.throughput._target_=common.training.throughput.ThroughputMonitor",
            "+callbacks.throughput.every_n_steps=1",
        )
    )
    rows = perf_rows(tmp_path)
    assert len(rows) == 2 and all(float(r["perf/images_per_sec"]) > 0 for r in rows)
    assert all(r.get("perf/mfu", "") == "" for r in rows)


def test_training_flops_per_sample_are_three_forward_passes_in_real_flops():
    from diffusion_transformer.models import DiT_S_2
    from diffusion_transformer.module import DiTModule

    module = DiTModule(model=DiT_S_2(input_size=32), diffusion={"objective": "ddpm"})
    # DiT-S/2: 6.06 Gflops (multiply-adds) per forward pass, Table 2.1.
    assert module.flops_per_sample() == 3 * 2 * module.model.flops()["matmul"]
    assert module.flops_per_sample() / 6e9 == pytest.approx(6.06, abs=0.01)


@pytest.mark.parametrize(
    "name,precision,matmul_precision,expected",
    [
        ("NVIDIA H200", "bf16-mixed", "highest", 989e12),
        ("NVIDIA H200", "16-mixed", "highest", 989e12),
        ("NVIDIA H200", "32-true", "high", 494.5e12),
        ("NVIDIA H200", "32-true", "highest", 67e12),
        ("NVIDIA H200 NVL", "bf16-true", "highest", 835e12),
        ("NVIDIA H100 80GB HBM3", "bf16-mixed", "highest", 989.4e12),  # Lightning's table
    ],
)
def test_dense_peak_flops(monkeypatch, name, precision, matmul_precision, expected):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(matmul_precision)
    try:
        assert peak_flops(torch.device("cuda", 0), precision) == pytest.approx(expected)
    finally:
        torch.set_float32_matmul_precision(previous)


def test_cpu_peak_is_unknown_and_precisions_map_to_dtypes():
    assert peak_flops(torch.device("cpu"), "32-true") is None
    assert precision_dtype("bf16-mixed") is torch.bfloat16
    assert precision_dtype("16-mixed") is torch.float16
    assert precision_dtype("32-true") is torch.float32
    with pytest.raises(ValueError, match="every_n_steps"):
        ThroughputMonitor(every_n_steps=0)
