"""``hydra_main``: ``hydra.main`` plus one-line errors and value checks, for every command.

A command is ``@hydra_main("<config>", checks={...})`` over ``main(cfg)``. Errors a user can act
on (``common.errors``) print as one line, ``error: <what>; <what to do>``, with exit code 2 and no
traceback (``HYDRA_FULL_ERROR=1`` or ``debug=true`` show it); in a multirun each failed job prints
its line and the others still run. ``--help`` prints this command's groups and composed config
without importing torch. Inputs are read relative to the launch folder (``hydra.job.chdir`` stays
false).
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from common.errors import check_values, is_user_error, one_line, refuse_unused

_DEBUG = ("debug=true", "debug=True", "+debug=true")
_FULL_ERROR = "GENMODELS_FULL_ERROR"  # what the user asked for, seen by DDP children too
_pending: list[BaseException] = []  # a single run's user error, printed after Hydra returns
_run_dirs: list[Path] = []  # the output folder of that run


def _yaml(path: Path) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path)) or {}


def _defaults(config_file: Path) -> list[tuple[str, str | None]]:
    """``(group, option)`` of each group in the defaults list of a primary config file."""
    entries = _yaml(config_file).get("defaults") or []
    return [(key.split()[-1].lstrip("/"), option) for e in entries if isinstance(e, dict)
            for key, option in e.items()]  # fmt: skip


def check_experiment_for(cfg: Any, command: str) -> None:
    """Refuse an experiment recorded for another command of the package (``experiment_for:``,
    where two commands share one ``experiment`` group, as GANgealing's ``train_gan`` and
    ``train`` do): it would set keys this command does not read."""
    meant = cfg.get("experiment_for")
    if meant and meant != command:
        raise ValueError(
            f"this experiment is a recipe for python -m {meant}, not python -m {command}; run it "
            f"with python -m {meant}, or choose another experiment="
        )


def default_config() -> Any:
    """This Hydra job's config composed from its group choices alone (``model=xl``,
    ``experiment=...``), without its ``key=value`` overrides: what the user did not set, experiment
    presets included."""
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    groups = set(hc.runtime.choices)
    chosen = [o for o in hc.overrides.task if o.lstrip("+~").split("=")[0] in groups]
    return compose(config_name=hc.job.config_name, overrides=chosen)


#: What a resumed checkpoint brings back over the config: the run folder, and the optimizer's
#: hyperparameters (``torch.optim.Optimizer.load_state_dict`` restores each param group's).
_RESUMED = ("run_dir", "optim.lr", "optim.mode_lr", "optim.betas", "optim.weight_decay")


def refuse_ignored_training_keys(cfg: Any, unused: dict[str, tuple[str, str]]) -> None:
    """Refuse the keys ``unused`` of a training command (``key: (why, fix)``) and those every
    training command ignores: ``fsdp_wrap_classes`` without ``strategy=fsdp``,
    ``ddp_find_unused_parameters`` without ``strategy=ddp``, and what ``resume=`` restores from
    the run (``_RESUMED``), where set away from :func:`default_config` (issue 28)."""
    from hydra.core.hydra_config import HydraConfig

    strategy = HydraConfig.get().runtime.choices.get("strategy")
    resumed = ("resume= restores it from the run", "start a new run without resume=")
    shared = dict.fromkeys(_RESUMED, resumed) if cfg.get("resume") else {}
    if strategy != "fsdp":
        shared["fsdp_wrap_classes"] = (
            f"strategy={strategy} wraps no FSDP units",
            "pass strategy=fsdp",
        )
    if strategy != "ddp":
        why = f"strategy={strategy} is not Lightning's DDPStrategy"
        shared["ddp_find_unused_parameters"] = (why, "pass strategy=ddp")
    refuse_unused(cfg, default_config(), {**shared, **unused})


def print_error(err: BaseException, prefix: str = "") -> None:
    print(f"error: {prefix}{one_line(err)}", file=sys.stderr, flush=True)


class HydraJobFailures(RuntimeError):
    """Some jobs of a multirun failed with user errors (each printed its own line)."""


def hydra_job() -> dict[str, Any] | None:
    """This process's Hydra job: ``multirun``, ``num``, ``overrides``, ``sweep_dir``; ``None``
    outside a Hydra application (``compose`` in tests, the Python API)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    return {
        "multirun": multirun,
        "num": int(hc.job.num) if multirun else None,
        "overrides": list(hc.overrides.task),
        "sweep_dir": str(Path(hc.sweep.dir).absolute()) if multirun else None,
    }


def _group_options(config_file: Path, group: str, default: str | None, module: str) -> list[str]:
    """The options of ``group`` beside its ``default`` (``model: stn/paper`` -> ``stn/*``), in
    the command's config tree and in ``common``'s shared groups, less the experiments recorded
    for another command (``experiment_for``)."""
    from importlib.resources import files

    sub = str(Path(default).parent) if default and "/" in default else ""
    names = set()
    for root in (config_file.parent, Path(str(files("common.conf")))):
        for path in (root / group / sub).glob("*.yaml"):
            if _yaml(path).get("experiment_for") in (None, module):
                names.add(str(Path(sub) / path.stem) if sub else path.stem)
    return sorted(names)


def command_help(config_file: Path, module: str, overrides: Sequence[str]) -> str:
    """``--help``: the config file's header, this command's groups (Hydra's own help lists every
    group of the package's tree), how to set keys, and the config composed with ``overrides``."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    header = []
    for line in config_file.read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line.lstrip("#").strip())
    lines = [f"python -m {module}", *[f"  {h}" for h in header if h], ""]
    lines.append("Config groups, chosen with group=option (* the default):")
    for group, default in [*_defaults(config_file), ("hydra/launcher", "basic")]:
        options = _group_options(config_file, group, default, module)
        if group == "hydra/launcher":
            options = sorted({"basic", *options})
        shown = [f"{o}*" if o == default else o for o in options]
        lines.append(f"  {group}: {', '.join(shown) or '(none)'}" + ("" if default else " (none*)"))
    lines += [
        "",
        "Every key below is set with key=value (nested keys a.b=value, lists [1,2]); ~group drops",
        "a group. --cfg job prints the composed config, -m runs a sweep over comma-separated",
        "values, -sc install=bash installs tab completion, --hydra-help shows Hydra's own help.",
        "",
        "== Config ==",
    ]
    keep = [a for a in overrides if "=" in a and not a.startswith("-")]
    with initialize_config_dir(config_dir=str(config_file.parent), version_base="1.3"):
        cfg = compose(config_name=config_file.stem, overrides=keep)
    return "\n".join(lines) + "\n" + OmegaConf.to_yaml(cfg)


def _exit_on_user_errors(func: Callable[[], Any], full_error: bool) -> Any:
    """Run ``func()``; a user error prints one line and exits with code 2 (see module doc)."""
    try:
        return func()
    except Exception as err:  # noqa: BLE001 (sorted below: bugs keep their traceback)
        if full_error or not is_user_error(err):
            raise
        if isinstance(err, HydraJobFailures):
            print(f"error: {err}", file=sys.stderr, flush=True)
        else:
            print_error(err)
        sys.exit(2)


def _refuse_chdir() -> None:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized() and HydraConfig.get().job.chdir:
        raise ValueError(
            "hydra.job.chdir=true is not supported: inputs are read relative to the launch "
            "folder and outputs go to out=; drop hydra.job.chdir"
        )


def _output_dir() -> Path | None:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else None


def _remove_if_empty(run_dir: Path | None) -> None:
    """Remove the output folder of a run that failed before writing anything: what is left is
    only Hydra's record of the config, the log of the error just printed, the W&B run id that
    ``common.training.runs`` chose for it and its ``job.json`` saying it failed before training
    (``fit_started`` unset: stopped by its input). Anything else keeps it: a checkpoint, a W&B
    run, samples, or the record of a failure during training."""
    if run_dir is None or not run_dir.is_dir():
        return

    def record(p: Path) -> bool:
        if p.name == "job.json":
            import json

            try:
                job = json.loads(p.read_text())
                return job.get("status") == "failed" and "fit_started" not in job
            except (OSError, ValueError, AttributeError):
                return False
        return p.name in (".hydra", "run_id.txt", ".lock") or p.suffix == ".log"

    if all(record(p) for p in run_dir.iterdir()):
        import logging
        import shutil

        for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
            for handler in list(getattr(logger, "handlers", [])):  # Hydra's <command>.log
                if isinstance(handler, logging.FileHandler) and Path(
                    handler.baseFilename
                ).is_relative_to(run_dir.resolve()):
                    logger.removeHandler(handler)
                    handler.close()
        shutil.rmtree(run_dir, ignore_errors=True)
        launch = Path.cwd().resolve()
        for parent in run_dir.resolve().parents:  # outputs/<package>/<command>, if now empty
            if parent == launch or launch not in parent.parents or any(parent.iterdir()):
                break
            parent.rmdir()


def hydra_main(
    config_name: str, config_path: str = "conf", checks: dict[str, str] | None = None
) -> Callable[[Callable[[Any], Any]], Callable[[], Any]]:
    """``@hydra_main("train", checks={"batch_size": "int>=1"})`` over a command's ``main(cfg)``;
    ``checks`` are ``common.errors.check_values`` rules, applied to the composed config before the
    command runs."""

    def decorator(task: Callable[[Any], Any]) -> Callable[[], Any]:
        config_file = Path(inspect.getfile(task)).parent / config_path / f"{config_name}.yaml"

        @functools.wraps(task)  # Hydra finds conf/ beside the command's module
        def checked_task(cfg: Any) -> Any:
            try:
                _refuse_chdir()
                check_experiment_for(cfg, task.__module__)
                check_values(cfg, checks or {})
                return task(cfg)
            except Exception as err:
                if os.environ.get(_FULL_ERROR) == "1" or not is_user_error(err):
                    raise
                job = (hydra_job() or {}).get("num")
                if job is None:  # reported by main() once Hydra has returned: one line only
                    _pending.append(err)
                    _run_dirs.append(_output_dir())
                    return None
                print_error(err, prefix=f"job {job}: ")  # say it now; the sweep goes on
                raise HydraJobFailures(
                    "jobs of the sweep failed (their errors are above, and in each job's "
                    "job.json); fix them and rerun the same command to finish the sweep"
                ) from err

        @functools.wraps(task)
        def main() -> Any:
            import hydra

            debug = any(a in _DEBUG for a in sys.argv[1:])
            sys.argv[1:] = [a for a in sys.argv[1:] if a not in _DEBUG]
            for arg in sys.argv[1:]:  # refused before Hydra runs, so --cfg job says it too
                key, _, name = arg.partition("=")
                recipe = config_file.parent / "experiment" / f"{name}.yaml"
                if key == "experiment" and recipe.is_file():
                    try:
                        check_experiment_for(_yaml(recipe), task.__module__)
                    except ValueError as err:
                        print_error(err)
                        sys.exit(2)
            if any(a in ("--help", "-h") for a in sys.argv[1:]):
                try:
                    print(command_help(config_file, task.__module__, sys.argv[1:]))
                except Exception as err:  # noqa: BLE001 (a bad override: one line, as elsewhere)
                    print_error(err)
                    sys.exit(2)
                return None
            inherited = os.environ.get(_FULL_ERROR)  # set for DDP children by their parent
            asked = inherited == "1" if inherited is not None else (
                os.environ.get("HYDRA_FULL_ERROR") == "1"
            )  # fmt: skip
            full_error = debug or asked
            previous = {k: os.environ.get(k) for k in (_FULL_ERROR, "HYDRA_FULL_ERROR")}
            os.environ[_FULL_ERROR] = "1" if full_error else "0"
            os.environ["HYDRA_FULL_ERROR"] = "1"  # errors reach _exit_on_user_errors unprinted
            entry = hydra.main(version_base="1.3", config_path=config_path,
                               config_name=config_name)(checked_task)  # fmt: skip
            try:
                result = _exit_on_user_errors(entry, full_error)
                if _pending:
                    print_error(_pending.pop())
                    _remove_if_empty(_run_dirs.pop())
                    sys.exit(2)
                return result
            finally:
                _pending.clear()
                _run_dirs.clear()
                for key, value in previous.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value

        return main

    return decorator
