"""G.pt end to end through its entry points: collect -> train (and resume) -> prompt -> evaluate."""

from __future__ import annotations

import json

import pytest

from common.checkpoint import safe_load
from tests.integration.conftest import run_cli

TINY_TRAIN = [
    "model=tiny",
    "batch_size=16",
    "logger=none",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.val_check_interval=3",
    "checkpoint_every=3",
]


def printed(stdout: str, command: str) -> list[str]:
    """The arguments of the next command ``python -m gpt_checkpoints.<command> ...`` that a
    command printed (exactly one such line)."""
    prefix = f"python -m gpt_checkpoints.{command} "
    lines = [line.split(prefix, 1)[1] for line in stdout.splitlines() if prefix in line]
    assert len(lines) == 1, stdout
    return lines[0].split()


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    """A tiny collection with a relative out=: (its folder, collect's stdout)."""
    root = tmp_path_factory.mktemp("gpt")
    proc = run_cli(
        "gpt_checkpoints.collect",
        "runs=8",
        "checkpoints_per_run=10",
        "batch_runs=4",
        "task.recipe.epochs=1",
        "out=ds",
        f"hydra.run.dir={root / 'h'}",
        cwd=root,
    )
    assert "8 stored, 0 filtered" in proc.stdout
    return root / "ds", proc.stdout


@pytest.fixture(scope="module")
def dataset(collected):
    return collected[0]


def test_collect_train_resume_prompt_evaluate(collected, tmp_path, cli_main):
    """Each command's printed next command, run as printed from another folder (plus tiny sizes
    and output folders, keys the printed command leaves to their defaults)."""
    dataset, collect_out = collected
    assert printed(collect_out, "train") == ["task=mlp_digits", f"dataset={dataset}"]
    run_dir = tmp_path / "run"
    tiny = [f"hydra.run.dir={run_dir}", "test_fraction=0.25", *TINY_TRAIN]
    common = [*printed(collect_out, "train"), *tiny]
    out = run_cli("gpt_checkpoints.train", *common, "trainer.max_steps=3", cwd=tmp_path).stdout
    assert "gpt.safetensors" in out
    cpu_sampler = ["sampler=ddim", "sampling_steps=2"]  # a CPU-sized G.pt: the fast sampler
    assert printed(out, "prompt") == [f"ckpt={run_dir}", *cpu_sampler]
    assert printed(out, "evaluate") == [f"ckpt={run_dir}", *cpu_sampler]
    run_id = (run_dir / "run_id.txt").read_text()  # the W&B run a resume continues
    out = run_cli(
        "gpt_checkpoints.train", *common, "trainer.max_steps=6", f"resume={run_dir}", cwd=tmp_path
    ).stdout
    ckpt = safe_load(run_dir / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 6
    assert (run_dir / "run_id.txt").read_text() == run_id
    assert ckpt["hyper_parameters"]["metric"] == "test_loss"

    prompted = tmp_path / "prompted"
    out = run_cli(
        "gpt_checkpoints.prompt",
        *printed(out, "prompt"),
        "init=kaiming",
        "recursive=2",
        "prompt=0.5",
        "device=cpu",
        f"out={prompted}",
        cwd=tmp_path,
    ).stdout
    assert "test_loss" in out and "2 G.pt step(s) on cpu" in out
    assert f"parameters    : {prompted / 'prompted_params.safetensors'}" in out
    state = safe_load(prompted / "prompted_params.safetensors")
    assert state["fc1.weight"].shape == (10, 64)
    report = json.loads((prompted / "report.json").read_text())
    assert len(report["trace"]) == 3 and report["prompt"] == 0.5

    assert printed(out, "evaluate") == [f"ckpt={run_dir}", *cpu_sampler]
    ignored = [  # keys a combination ignores are refused
        ("gpt_checkpoints.prompt", "params=net.safetensors", "init=kaiming"),
        ("gpt_checkpoints.prompt", "prompt=0.5", "better=max"),
        ("gpt_checkpoints.prompt", "preset=mnist_loss"),
        ("gpt_checkpoints.evaluate", "preset=mnist_loss"),
    ]
    for command, *args in ignored:
        code, err = cli_main(command, f"ckpt={run_dir}", *args)
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
        assert args[-1].split("=")[0] + "=" in errors[0], err

    eval_dir = tmp_path / "eval"  # the dataset and split it was trained on, from the G.pt file
    run_cli(
        "gpt_checkpoints.evaluate",
        *printed(out, "evaluate"),
        f"out={eval_dir}",
        "device=cpu",
        "logger=csv",
        "num_nets=2",
        "curve_steps=4",
        "alignment_nets=2",
        "alignment_prompts=4",
        "recursive_steps=2",
        "memorization_runs=1",
        "memorization_prompts=2",
        cwd=tmp_path,
    )
    results = json.loads((eval_dir / "results.json").read_text())
    for key in ("one_step_gpt", "one_step_best_sgd", "one_step_best_adam", "prompt_alignment_r2"):
        assert isinstance(results[key], float), key
    assert set(results["recursive_prompting"]) == {"fan_in_uniform", "kaiming", "xavier", "normal"}
    assert len(results["nearest_neighbour_score"]) == 2
    assert results["optimization_curves"]["curves"]["sgd"].keys() >= {"0", "4"}
    novelty = results["novelty"]["methods"]
    assert set(novelty) >= {"gpt", "nearest_prompted", "interpolation", "independent_runs"}
    assert len(novelty["gpt"]["distance"]) == 2  # the two held-out runs of test_fraction=0.25
    for png in ("one_step.png", "curves.png", "alignment.png", "recursive.png", "novelty.png"):
        assert (eval_dir / png).stat().st_size > 0
    logged = (eval_dir / "csv" / "metrics.csv").read_text()  # logger=csv: the scalar results
    assert "one_step_gpt" in logged and "prompt_alignment_r2" in logged


def test_gpt_cli_errors_name_the_fix(dataset, cli_main, tmp_path):
    cases = [
        ([f"dataset={tmp_path / 'none'}"], "gpt_checkpoints.collect"),
        ([f"dataset={dataset}", "task=cnn_digits"], "holds task 'mlp_digits' but task=cnn_digits"),
        ([f"dataset={dataset}", "metric=return"], "metric 'return' is not recorded"),
    ]
    for args, phrase in cases:
        code, err = cli_main("gpt_checkpoints.train", *args, *TINY_TRAIN)
        assert code == 2 and phrase in err.strip().splitlines()[-1], err
    evaluate_cases = [
        (["noise_levels=[0.1,-1]"], "error: noise_levels[1]=-1 makes no sense here; pass"),
        ([f"dataset={tmp_path / 'none'}"], "none is not a checkpoint dataset folder"),
        (["analyses=[curves]", "split_seed=1"], "split_seed= only serve the memorization and"),
        (["analyses=[novelti]"], "unknown analyses ['novelti']; choose from [one_step,curves,"),
    ]
    ckpt = f"ckpt={tmp_path / 'g.safetensors'}"
    for args, phrase in evaluate_cases:
        code, err = cli_main("gpt_checkpoints.evaluate", ckpt, *args)
        assert code == 2 and phrase in err.strip().splitlines()[-1], err


def test_neuron_model_trains_and_reloads_from_its_export(dataset, tmp_path):
    """model=neuron through the CLI: the exported file restores the same equivariant model."""
    import torch

    from gpt_checkpoints.model.module import load_gpt
    from gpt_checkpoints.params.permutation import apply_permutations, random_permutations

    run_dir = tmp_path / "run"
    tiny_neuron = ["model=neuron", "model.hidden_size=32", "model.depth=1", "model.num_heads=2"]
    run_cli(
        "gpt_checkpoints.train",
        f"dataset={dataset}",
        f"hydra.run.dir={run_dir}",
        *TINY_TRAIN,
        *tiny_neuron,
        "trainer.max_steps=3",
        cwd=tmp_path,
    )
    ckpt, export = load_gpt(run_dir / "checkpoints" / "last.ckpt"), load_gpt(run_dir)
    assert export.model.tokenization == "neuron"
    assert export.model.tokenizer.token_sizes == [75] * 10 + [10]
    theta = torch.randn(3, export.layout.num_params) * 0.1
    x, t = torch.randn_like(theta), torch.tensor([0, 400, 999])
    loss, target = torch.tensor([0.9, 0.5, 0.2]), torch.tensor([0.1, 0.2, 0.3])
    with torch.no_grad():
        out = export.ema.module(x, t, theta, loss, target)
        torch.testing.assert_close(ckpt.ema.module(x, t, theta, loss, target), out)
        perms = random_permutations(export.groups, 3, torch.Generator().manual_seed(0))
        permute = lambda v: apply_permutations(v, export.layout, export.groups, perms)  # noqa: E731
        moved = export.ema.module(permute(x), t, permute(theta), loss, target)
    torch.testing.assert_close(moved, permute(out), atol=1e-5, rtol=1e-5)


def test_the_official_architecture_trains_on_a_collected_dataset(dataset, tmp_path):
    """model=mnist_loss (the released network, narrowed here) through the real entry point:
    parameters scaled by the preset's openai_coeff, raw metrics, and the export reloads."""
    from gpt_checkpoints.model.module import load_gpt
    from gpt_checkpoints.model.official import OfficialGpt

    run_dir = tmp_path / "run"
    narrow = [
        "+model.hidden_size=32",
        "+model.depth=1",
        "+model.num_heads=2",
        "+model.chunk_size=64",
    ]
    run_cli(
        "gpt_checkpoints.train",
        f"dataset={dataset}",
        "model=mnist_loss",
        *narrow,
        *(a for a in TINY_TRAIN if not a.startswith("model=")),
        "trainer.max_steps=3",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    module = load_gpt(run_dir)
    assert isinstance(module.model, OfficialGpt) and module.metric_normalizer.encoding == "raw"
    assert set(module.normalizer.layer_scales) == {4.185}
    # the digits MLP's tensors (640, 10, 100, 10) in chunks of at most 64 within each tensor
    assert module.model.decoder.output_splits == [64] * 10 + [10, 64, 36, 10]
