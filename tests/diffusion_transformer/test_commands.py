"""One way to do each thing: one table of model sizes (Table 2.1) that the registry and the Hydra
model configs read, Hydra ``key=value`` for every command, one output-folder layout and a console
script each."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import hydra
import pytest
import torch
from omegaconf import OmegaConf

from diffusion_transformer import models
from diffusion_transformer.models import DIT_CONFIGS, PATCH_SIZES, DiT_models, DiTSize
from tests.diffusion_transformer.test_report import _fake_sweep

PACKAGE = Path(models.__file__).parent
CONF = PACKAGE / "conf"
PYPROJECT = PACKAGE.parents[1] / "pyproject.toml"
# Table 2.1: layers N, hidden size d, heads, and Gflops at I = 32, p = 4.
TABLE_2_1 = {
    "S": (12, 384, 6, 1.4),
    "B": (12, 768, 12, 5.6),
    "L": (24, 1024, 16, 19.7),
    "XL": (28, 1152, 16, 29.1),
}
# Parameters of the /2 models in millions, as the DiT paper reports them (XL/2: 675M).
PARAMS_M = {"S": 33, "B": 130, "L": 458, "XL": 675}
COMMANDS = (
    "train",
    "sample",
    "evaluate",
    "extract_latents",
    "export_diffusers",
    "report",
    "gflops",
)
STAMP = "${now:%Y-%m-%d_%H-%M-%S.%f}"


# ----------------------------------------------------------------------------- model sizes
def test_the_size_table_is_table_2_1():
    assert {size: tuple(row) for size, row in DIT_CONFIGS.items()} == {
        size: row[:3] for size, row in TABLE_2_1.items()
    }
    assert DIT_CONFIGS["XL"] == DiTSize(depth=28, hidden_size=1152, num_heads=16)
    assert DIT_CONFIGS["XL"].hidden_size == 1152


@pytest.mark.parametrize("size", list(TABLE_2_1))
def test_every_registry_function_builds_its_table_row(size):
    depth, hidden, heads, gflops_p4 = TABLE_2_1[size]
    for patch in PATCH_SIZES:
        name = f"DiT-{size}/{patch}"
        constructor = getattr(models, f"DiT_{size}_{patch}")  # hand-written, found by grep
        assert DiT_models[name] is constructor and constructor.__name__ == f"DiT_{size}_{patch}"
        with torch.device("meta"):
            model = constructor()
        assert (model.depth, model.hidden_size, model.num_heads) == (depth, hidden, heads)
        assert model.patch_size == patch
        if patch == 4:
            assert round(model.gflops(), 1) == gflops_p4
        if patch == 2:
            params = sum(p.numel() for p in model.parameters())
            assert abs(params / 1e6 - PARAMS_M[size]) < 1, params


def test_registry_keeps_the_official_names_and_keyword_arguments():
    with torch.device("meta"):
        model = models.DiT_S_8(input_size=64, num_classes=10, learn_sigma=False)
    assert (model.input_size, model.num_classes, model.out_channels) == (64, 10, 4)
    assert "final_layer.adaLN_modulation.1.weight" in model.state_dict()
    assert list(DiT_models)[0] == "DiT-XL/2" and len(DiT_models) == 12


def build_model(cfg):
    """The network the training config builds (``hydra.utils.instantiate``), without memory."""
    with torch.device("meta"):
        return hydra.utils.instantiate(cfg.model)


@pytest.mark.parametrize("option", ["s", "b", "l", "xl"])
def test_every_model_yaml_names_a_size_and_builds_its_table_row(compose_train, option):
    raw = OmegaConf.load(CONF / "model" / f"{option}.yaml")
    assert raw.size == option.upper()
    assert (raw.depth, raw.hidden_size, raw.num_heads) == (None, None, None)  # no copies
    model = build_model(compose_train(f"model={option}"))
    assert (model.depth, model.hidden_size, model.num_heads) == DIT_CONFIGS[option.upper()]


def test_explicit_numbers_override_the_table(compose_train):
    model = build_model(compose_train("model=xl", "model.depth=4", "model.num_heads=8"))
    assert (model.depth, model.hidden_size, model.num_heads) == (4, 1152, 8)
    tiny = build_model(compose_train("model=tiny"))  # not in Table 2.1: numbers in its YAML
    assert (tiny.depth, tiny.hidden_size, tiny.num_heads) == (4, 128, 4)


def test_a_size_outside_the_table_names_the_fix(compose_train):
    cfg = compose_train("model=b", "model.size=M")
    with pytest.raises(Exception, match=r"'M' is not in Table 2.1 .*model=s\|b\|l\|xl"):
        build_model(cfg)


# ----------------------------------------------------------------------------- gflops
def test_gflops_takes_key_value_overrides(run_main):
    code, out, _ = run_main("diffusion_transformer.gflops", "image_size=512", "block=adaln")
    assert code == 0
    assert any(line.split() == ["DiT-XL/2", "524.6"] for line in out.splitlines())
    code, out, _ = run_main("diffusion_transformer.gflops", "block=in_context")
    assert code == 0 and "DiT-XL/2    119.4" in out


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (["image_size=12"], "not a multiple of the VAE's factor 8; pass e.g. image_size=256"),
        (["image_size=0"], "image_size=0 makes no sense"),
        (["block=moe"], "Could not find 'block/moe'"),
    ],
)
def test_gflops_user_errors_are_one_line_with_exit_code_2(run_main, args, phrase):
    code, _, err = run_main("diffusion_transformer.gflops", *args)
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("error: ") and phrase in last, err


# ----------------------------------------------------------------------------- report
def test_report_takes_key_value_overrides(run_main, tmp_path):
    _fake_sweep(tmp_path / "sweep")
    args = ["sweep=sweep", "out=figures", "logger=none", "metric=fd_digits"]
    code, out, err = run_main("diffusion_transformer.report", *args)
    assert code == 0, err
    assert "Spearman = -0.943" in out and "W&B run" not in out
    assert (tmp_path / "figures" / "fid_vs_gflops.csv").is_file()
    assert not (tmp_path / "figures" / "wandb").exists()


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        ([], "sweep"),
        (["sweep=missing_sweep"], "is not a directory"),
        (["sweep=.", "logger=off"], "Could not find 'logger/off'"),
    ],
)
def test_report_user_errors_are_one_line_with_exit_code_2(run_main, args, phrase):
    code, _, err = run_main("diffusion_transformer.report", *args)
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("error: ") and phrase in last, err


def test_report_logs_one_offline_wandb_run_unless_the_logger_says_otherwise(run_main):
    """``logger=wandb|csv|none`` (the shared group): W&B offline by default, no W&B run with
    ``none`` or ``csv`` (the report's table is a CSV file anyway)."""
    for args, loggers in (([], {"wandb"}), (["logger=none"], set()), (["logger=csv"], {"csv"})):
        code, out, _ = run_main("diffusion_transformer.report", "sweep=.", *args, "--cfg", "job")
        logger = OmegaConf.create(out).logger or {}
        assert code == 0 and set(logger) == loggers
        if "wandb" in logger:
            assert logger.wandb.offline is True


# ----------------------------------------------------------------------------- every command
@pytest.mark.parametrize("module", ["diffusion_transformer.report", "diffusion_transformer.gflops"])
def test_help_and_cfg_job(run_main, module):
    key = "sweep" if module.endswith("report") else "image_size"
    code, out, _ = run_main(module, "--help")
    assert code == 0 and "== Config ==" in out and f"{key}:" in out
    code, out, _ = run_main(module, "--cfg", "job")
    assert code == 0
    keys = set(OmegaConf.to_container(OmegaConf.create(out)))
    assert key in keys and "hydra" not in keys


def test_help_and_cfg_job_as_real_processes(tmp_path):
    """The shell's view of ``python -m``: exit 0, no traceback, nothing on stderr."""
    env = {**os.environ, "WANDB_MODE": "disabled"}
    runs = {
        ("diffusion_transformer.gflops", "--help"): "== Config ==",
        ("diffusion_transformer.report", "--cfg", "job"): "sweep: ???",
    }
    for (module, *args), expected in runs.items():
        proc = subprocess.run(
            [sys.executable, "-m", module, *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        assert expected in proc.stdout and not proc.stderr.strip(), proc.stderr


def test_experiment_sweeps_stay_under_the_train_folder():
    for path in sorted((CONF / "experiment").glob("*.yaml")):
        raw = OmegaConf.to_container(OmegaConf.load(path))
        sweep_dir = raw.get("hydra", {}).get("sweep", {}).get("dir")
        if sweep_dir is not None:
            assert sweep_dir == f"multirun/diffusion_transformer/train/{path.stem}/{STAMP}", path


def test_every_command_has_a_config_and_a_console_script():
    section = PYPROJECT.read_text().split("[project.scripts]")[1].split("\n[")[0]
    scripts = dict(re.findall(r'^([\w-]+) = "([\w.:]+)"$', section, flags=re.M))
    primaries = {p.stem for p in CONF.glob("*.yaml")}
    assert primaries == set(COMMANDS)
    for command in COMMANDS:
        name = "dit-" + command.replace("_", "-")
        assert scripts[name] == f"diffusion_transformer.{command}:main", name
    assert set(scripts) == {"dit-" + c.replace("_", "-") for c in COMMANDS}


def test_docstrings_name_the_new_folders():
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"\boutputs/(train|sample|evaluate)\b", text), path
