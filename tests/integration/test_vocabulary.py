"""One vocabulary for every command: CONTRIBUTING's table ("One vocabulary") held over every
command's composed config. A key of the table is in exactly the commands it lists; the spellings
that once named the same roles (``gpt=``, ``congealer=``, ``images=``, ``data_root=``,
``wandb=``, ...) are in none."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomllib
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ["diffusion_transformer", "gpt_checkpoints", "gangealing"]
# The group option under which a command reads data from a folder (its default reads built-in data).
DATA_FROM_A_FOLDER = {
    "diffusion_transformer.train": ["data=folder"],
    "gangealing.train_gan": ["data=folder"],
}
# Spellings of the table's roles that no command may use (they named them before the table).
FORMER = ["gpt", "congealer", "run", "src", "data_root", "images", "root", "wandb", "wandb_mode",
          "out_dir", "hflip", "stn_lr", "mode_lr", "task.data_root"]  # fmt: skip


def _commands() -> list[str]:
    modules = []
    for package in PACKAGES:
        meta = tomllib.loads((REPO / "packages" / package / "pyproject.toml").read_text())
        modules += [t.partition(":")[0] for t in meta["project"]["scripts"].values()]
    return sorted(modules)


def _table() -> dict[str, set[str]]:
    """CONTRIBUTING's vocabulary table: key -> the commands it lists."""
    text = (REPO / "CONTRIBUTING.md").read_text().split("### One vocabulary", 1)[1]
    table = {}
    for line in text.splitlines():
        if m := re.match(r"^\| `([\w.]+)=` \|[^|]*\| (.*) \|$", line):
            table[m[1]] = set(re.findall(r"`(\w+\.\w+)`", m[2]))
    return table


def _config(module: str) -> dict:
    package, _, command = module.partition(".")
    conf = REPO / "packages" / package / "src" / package / "conf"
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(config_name=command, overrides=DATA_FROM_A_FOLDER.get(module, []))
    GlobalHydra.instance().clear()
    return OmegaConf.to_container(cfg, resolve=False)


def _has(cfg: dict, key: str) -> bool:
    for part in key.split("."):
        if not isinstance(cfg, dict) or part not in cfg:
            return False
        cfg = cfg[part]
    return True


@pytest.fixture(scope="module")
def configs() -> dict[str, dict]:
    return {module: _config(module) for module in _commands()}


def test_the_table_names_only_real_commands_and_every_role():
    table = _table()
    assert set(table) == {"ckpt", "data.root", "dataset", "out", "device", "logger", "resume"}
    listed = set().union(*table.values())
    assert listed <= set(_commands()), sorted(listed - set(_commands()))


@pytest.mark.parametrize("key", sorted(_table()))
def test_a_key_of_the_table_is_in_exactly_the_commands_it_lists(configs, key):
    having = {module for module, cfg in configs.items() if _has(cfg, key)}
    assert having == _table()[key], {
        "missing": sorted(_table()[key] - having),
        "not listed": sorted(having - _table()[key]),
    }


def test_no_command_uses_a_former_spelling(configs):
    found = {m: [k for k in FORMER if _has(cfg, k)] for m, cfg in configs.items()}
    assert not {m: keys for m, keys in found.items() if keys}


def test_out_is_a_folder_and_device_defaults_to_auto(configs):
    for module, cfg in configs.items():
        out = cfg.get("out")
        if isinstance(out, str):
            name = re.sub(r"\$\{[^}]*\}", "x", Path(out).name)  # interpolations: a plain name
            assert "." not in name, f"{module}: out={out} looks like a file"
        if "device" in cfg:
            assert cfg["device"] == "auto", module


def test_logger_is_the_shared_group_everywhere(configs):
    for module, cfg in configs.items():
        if "logger" in cfg:
            assert isinstance(cfg["logger"], dict), module
            assert set(cfg["logger"]) <= {"wandb", "csv"}, module
