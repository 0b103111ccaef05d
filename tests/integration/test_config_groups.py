"""Every option of every config group of every command composes, in all three packages.

The cases come from the config trees themselves: for each primary config
(``conf/<package>/<command>.yaml``) and each group of its defaults list, every option that sits
next to the default one (in the package's tree or in ``common``'s shared ``trainer``,
``strategy``, ``logger`` groups) is selected with ``group=option``. A composed config must hold
every key the option sets; an ``experiment`` (``# @package _global_``, last in the defaults
list) must hold its values exactly, or be refused when it names another command
(``experiment_for``); every ``_target_`` and FSDP wrap class it names must import.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_module
from hydra.utils import get_object
from omegaconf import OmegaConf

import common.conf
from common.cli import check_experiment_for
from common.training.strategies import import_class

PACKAGES = ("diffusion_transformer", "gpt_checkpoints", "gangealing")
SHARED = Path(common.conf.__file__).parent


def _conf(package: str) -> Path:
    return Path(importlib.import_module(f"{package}.conf").__file__).parent


def _defaults(primary: Path) -> list[tuple[str, str | None]]:
    entries = OmegaConf.to_container(OmegaConf.load(primary)).get("defaults") or []
    return [(g, o) for e in entries if isinstance(e, dict) for g, o in e.items()]


def _options(package: str, group: str, default: str | None) -> list[str]:
    """The options of ``group`` beside ``default`` (``model: stn/paper`` -> ``stn/*``)."""
    sub = str(Path(default).parent) if default and "/" in default else ""
    names = set()
    for root in (_conf(package), SHARED):
        folder = root / group / sub
        names |= {str(Path(sub) / p.stem) if sub else p.stem for p in folder.glob("*.yaml")}
    return sorted(names)


def _cases() -> list[tuple[str, str, str, str]]:
    cases = []
    for package in PACKAGES:
        for primary in sorted(_conf(package).glob("*.yaml")):
            for group, default in _defaults(primary):
                for option in _options(package, group, default):
                    cases.append((package, primary.stem, group, option))
    return cases


CASES = _cases()


def _leaves(node, prefix=""):
    if isinstance(node, dict):
        for key, value in node.items():
            if key not in ("defaults", "hydra"):
                yield from _leaves(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, node


def _targets(node):
    if isinstance(node, dict):
        if isinstance(node.get("_target_"), str):
            yield node["_target_"]
        for value in node.values():
            yield from _targets(value)
    elif isinstance(node, list):
        for value in node:
            yield from _targets(value)


def _option_file(package: str, group: str, option: str) -> Path:
    own = _conf(package) / group / f"{option}.yaml"
    return own if own.is_file() else SHARED / group / f"{option}.yaml"


def test_the_cases_cover_every_group_of_every_package():
    groups = {(p, c, g) for p, c, g, _ in CASES}
    assert {g for _, _, g in groups} >= {
        "model", "data", "task", "metric", "diffusion", "block", "trainer", "strategy",
        "logger", "callbacks", "experiment",
    }  # fmt: skip
    for package in PACKAGES:  # every training command has the shared groups
        for group in ("trainer", "strategy", "logger", "callbacks", "experiment", "model"):
            assert (package, "train", group) in groups
    assert len(CASES) > 60


@pytest.mark.parametrize(
    ("package", "command", "group", "option"), CASES, ids=["/".join(c) for c in CASES]
)
def test_every_option_composes(package, command, group, option):
    with initialize_config_module(f"{package}.conf", version_base="1.3"):
        cfg = compose(config_name=command, overrides=[f"{group}={option}"])
    raw = OmegaConf.to_container(cfg, resolve=False)
    spec = OmegaConf.to_container(OmegaConf.load(_option_file(package, group, option)))
    spec = spec or {}
    meant = spec.get("experiment_for") if group == "experiment" else None
    if meant and meant != f"{package}.{command}":  # a recipe of the other command sharing the group
        with pytest.raises(ValueError, match=f"is a recipe for python -m {meant}, not"):
            check_experiment_for(cfg, f"{package}.{command}")
        return
    if group == "experiment":  # @package _global_, applied last: its values are the config's
        for key, value in _leaves(spec):
            node = raw
            for part in key.split("."):
                node = node[part]
            assert node == value, f"{key}: {node!r} != {value!r}"
    else:
        assert set(spec) - {"defaults"} <= set(raw[group] or {}), (spec, raw[group])
    for target in _targets(raw):
        assert callable(get_object(target)), target
    for name in raw.get("fsdp_wrap_classes") or []:
        assert isinstance(import_class(name), type), name


def test_an_experiment_of_the_other_command_is_one_line(cli_main):
    """GANgealing's two training commands share ``experiment``; each recipe names its command."""
    code, err = cli_main("gangealing.train_gan", "experiment=synthetic", "--cfg", "job")
    assert code == 2 and err.strip().splitlines()[-1] == (
        "error: this experiment is a recipe for python -m gangealing.train, not python -m "
        "gangealing.train_gan; run it with python -m gangealing.train, or choose another "
        "experiment="
    )


DATASET_BUILDERS = ("extract_latents", "collect", "import_official")
PRIMARIES = [(p, c.stem) for p in PACKAGES for c in sorted(_conf(p).glob("*.yaml"))]


@pytest.mark.parametrize(("package", "command"), PRIMARIES, ids=["/".join(p) for p in PRIMARIES])
def test_every_command_writes_under_outputs_package_command(package, command):
    """One naming scheme: ``outputs/<package>/<command>/<date-time>/`` (multiruns ``multirun/``),
    but a command that builds a dataset runs in that dataset's folder (``out=``): its log lives
    with the data, and a rerun resumes there."""
    with initialize_config_module(f"{package}.conf", version_base="1.3"):
        cfg = compose(config_name=command, return_hydra_config=True)
    hydra = OmegaConf.to_container(cfg.hydra, resolve=False)
    if command in DATASET_BUILDERS:
        assert hydra["run"]["dir"] == "${out}" and hydra["output_subdir"] is None
    else:
        assert hydra["run"]["dir"] == f"outputs/{package}/{command}/${{now:%Y-%m-%d_%H-%M-%S.%f}}"
    assert hydra["sweep"]["dir"].startswith(f"multirun/{package}/{command}/")


TRAIN = ["diffusion_transformer.train", "gpt_checkpoints.train", "gangealing.train_gan"]


@pytest.mark.parametrize("module", TRAIN)
def test_an_unknown_key_is_one_line_that_says_what_to_do(cli_main, module):
    code, err = cli_main(module, "optim.lrr=1")
    assert code == 2 and err.strip().splitlines()[-1].startswith(
        "error: optim.lrr is not a key of this command; check its spelling (--help or --cfg job "
        "lists the keys), or add a new one with +optim.lrr=<value> if your code reads it"
    )


@pytest.mark.parametrize(("package", "command"), PRIMARIES, ids=["/".join(p) for p in PRIMARIES])
def test_help_lists_this_commands_groups_and_its_composed_config(run_main, package, command):
    """``--help`` shows the groups of this command's defaults list (with the shared ones), not
    every folder of the package's tree as Hydra's default help does, then the config."""
    primary = _conf(package) / f"{command}.yaml"
    code, out, _ = run_main(f"{package}.{command}", "--help")
    assert code == 0 and out.startswith(f"python -m {package}.{command}\n")
    listed = {ln.split(":")[0].strip() for ln in out.split("Config groups")[1].split("\n\n")[0]
              .splitlines()[1:]}  # fmt: skip
    assert listed == {g for g, _ in _defaults(primary)} | {"hydra/launcher"}
    config = yaml.safe_load(out.split("== Config ==\n", 1)[1])
    with initialize_config_module(f"{package}.conf", version_base="1.3"):
        assert config == OmegaConf.to_container(compose(config_name=command))


@pytest.mark.parametrize(
    ("module", "args", "key"),
    [
        ("gpt_checkpoints.train", [], "batch_size"),
        ("gangealing.train_gan", [], "batch_size"),
        ("gangealing.train", ["generator=g.pt"], "batch_size"),
    ],
)
def test_batch_size_is_spelled_the_same_in_every_training_command(run_main, module, args, key):
    _, out, _ = run_main(module, *args, "batch_size=8", "--cfg", "job")
    assert OmegaConf.select(OmegaConf.create(out), key) == 8


def test_gpt_evaluate_logs_through_the_shared_logger_group(run_main, cli_main):
    """G.pt ``evaluate`` takes ``logger=wandb|csv|none`` from common/conf/logger (default none,
    as before: results.json and the PNGs are written either way)."""
    _, out, _ = run_main("gpt_checkpoints.evaluate", "ckpt=x", "--cfg", "job")
    assert OmegaConf.create(out).logger == {}
    _, out, _ = run_main("gpt_checkpoints.evaluate", "ckpt=x", "logger=wandb", "--cfg", "job")
    wandb = OmegaConf.create(out).logger.wandb
    assert (wandb.offline, wandb.project) == (True, "gpt")
    code, err = cli_main("gpt_checkpoints.evaluate", "ckpt=x", "logger=off")
    assert code == 2 and "Could not find 'logger/off'" in err.strip().splitlines()[-1]


def test_help_with_a_bad_override_is_one_line(cli_main):
    code, err = cli_main("diffusion_transformer.train", "--help", "optim.lrr=1")
    assert code == 2 and err.strip().splitlines()[-1].startswith(
        "error: optim.lrr is not a key of this command; check its spelling"
    )
    assert "Traceback" not in err
