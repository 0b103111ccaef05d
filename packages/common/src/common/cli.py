"""``hydra_main``: the one way every command of the monorepo is declared.

It is ``hydra.main`` (``key=value`` overrides, ``--help``, ``--cfg job``, ``-m`` multiruns, tab
completion) with the spellings users bring from other Hydra projects made to work:

- ``+experiment=x`` (Hydra's "Configuring Experiments" pattern) where the group already has a
  default: read as ``experiment=x`` instead of failing with "Multiple values for experiment";
- ``experiment=null`` (or ``strategy=null``, ...) for a group of the defaults list: read as
  Hydra's ``~experiment`` (no option of that group) instead of an internal ``ValueError``;
- ``hydra.job.chdir=true``: the command's input paths (``input_paths``: dataset folders,
  checkpoints to resume or load) given relative to the launch directory are made absolute
  before the job runs in its output folder.

Errors a user can act on (``common.errors``) print as one line, ``error: <what>; <what to do>``,
with exit code 2 and no traceback; ``HYDRA_FULL_ERROR=1`` or ``debug=true`` show the traceback.
In a multirun each failed job prints its line and the others still run.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from common.errors import check_values, is_user_error, one_line

_APPEND = re.compile(r"^\+{1,2}(?P<group>[A-Za-z_][\w]*)=(?P<value>.*)$")
_NULL = re.compile(r"^(?P<group>[A-Za-z_][\w]*)=(null|None|~)$")


def _defaults(config_file: Path) -> list[tuple[str, str | None]]:
    """``(group, option)`` of each group in the defaults list of a primary config file."""
    if not config_file.is_file():
        return []
    entries = _yaml(config_file).get("defaults") or []
    return [(key.split()[-1].lstrip("/"), option) for e in entries if isinstance(e, dict)
            for key, option in e.items()]  # fmt: skip


def default_groups(config_file: Path) -> set[str]:
    """The config groups listed in the defaults list of a primary config file."""
    return {group for group, _ in _defaults(config_file) if "/" not in group}


def _yaml(path: Path) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path)) or {}


def normalize_overrides(
    args: Sequence[str], groups: Iterable[str], aliases: dict[str, str] | None = None
) -> list[str]:
    """Rewrite ``+group=x`` to ``group=x`` and ``group=null`` to ``~group`` for the groups of the
    primary config's defaults list, and ``alias=x`` to ``key=x`` for a command's ``aliases``;
    every other argument is kept as it is."""
    groups = set(groups)
    out = []
    for arg in args:
        key, sep, value = arg.lstrip("+").partition("=")
        if sep and aliases and key in aliases:
            arg = f"{aliases[key]}={value}"
        elif (m := _APPEND.match(arg)) and m["group"] in groups:
            arg = f"{m['group']}={m['value']}"
        elif (m := _NULL.match(arg)) and m["group"] in groups:
            arg = f"~{m['group']}"
        out.append(arg)
    return out


def absolute_input_paths(cfg: Any, keys: Iterable[str]) -> None:
    """Make the dotted ``keys`` of ``cfg`` absolute against the launch directory when Hydra has
    changed into the job's folder (``hydra.job.chdir=true``). A value is taken for a path when it
    holds a separator or names something that exists there (``data=astronaut``, a built-in data
    set, stays a name)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict

    if not HydraConfig.initialized() or not HydraConfig.get().job.chdir:
        return
    launch = Path(HydraConfig.get().runtime.cwd)
    with open_dict(cfg):
        for key in keys:
            value = OmegaConf.select(cfg, key, default=None)
            if not isinstance(value, str) or not value or os.path.isabs(value):
                continue
            candidate = launch / value
            if os.sep in value or candidate.exists():
                OmegaConf.update(cfg, key, str(candidate), merge=False)


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


_DEBUG = ("debug=true", "debug=True", "+debug=true")
_FULL_ERROR = "GENMODELS_FULL_ERROR"  # what the user asked for, seen by child processes too
_pending: list[BaseException] = []  # a single run's user error, printed after Hydra returns


def print_error(err: BaseException, prefix: str = "") -> None:
    print(f"error: {prefix}{one_line(err)}", file=sys.stderr, flush=True)


def exit_on_user_errors(func: Callable[..., Any], full_error: bool = False) -> Any:
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


class HydraJobFailures(RuntimeError):
    """Some jobs of a multirun failed with user errors (each printed its own line)."""


def user_errors(main: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator for the ``argparse`` commands: one-line user errors, like ``hydra_main``."""

    @functools.wraps(main)
    def wrapped(argv: Sequence[str] | None = None) -> Any:
        argv = list(sys.argv[1:] if argv is None else argv)
        debug = any(a in _DEBUG or a == "--debug" for a in argv)
        argv = [a for a in argv if a not in _DEBUG and a != "--debug"]
        full = debug or os.environ.get("HYDRA_FULL_ERROR") == "1"
        return exit_on_user_errors(lambda: main(argv), full_error=full)

    return wrapped


def hydra_job() -> dict[str, Any] | None:
    """This process's Hydra job: ``multirun``, ``num``, ``overrides``, ``sweep_dir``; ``None``
    outside a Hydra application (``compose`` in tests, the Python API)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
    except ImportError:  # pragma: no cover
        return None
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


_HYDRA_VALUE_FLAGS = {
    "--cfg", "-c", "--package", "-p", "--config-name", "-cn", "--config-path", "-cp",
    "--config-dir", "-cd", "--info", "-i",
}  # fmt: skip


def translate_legacy_args(
    args: Sequence[str],
    flags: dict[str, Any] | None = None,
    positional: Sequence[str] = (),
    command: str = "this command",
) -> list[str]:
    """Former spellings of a command's arguments, as today's ``key=value`` overrides, with one
    deprecation line per use on stderr. ``flags`` maps argparse flags (``--steps 5`` /
    ``--steps=5`` -> ``steps=5``; Hydra's own ``--help``, ``--cfg``, ``-m`` pass through) and
    renamed keys: ``"transform": "model.transform"``, a prefix ``"stn.": "model."``, a group
    whose options moved, ``"gan": "model=stylegan2/{}"``, or a function of the value returning
    the overrides that replace it (None: the value is today's spelling). Bare arguments become the
    ``positional`` keys in order (``<run>`` -> ``run=<run>``)."""
    flags = flags or {}
    out: list[str] = []
    free = list(positional)
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, value = arg.partition("=")
        if arg in _HYDRA_VALUE_FLAGS and i + 1 < len(args):  # --cfg job: "job" is no positional
            out += [arg, args[i + 1]]
            i += 2
            continue
        if name in flags and name.startswith("-"):
            if not eq:
                if i + 1 >= len(args):
                    raise ValueError(f"{name} needs a value; pass {flags[name]}=<value>")
                value, i = args[i + 1], i + 1
            key = flags[name]
            print(f"warning: {name} is deprecated in {command}; use {key}={value}", file=sys.stderr)
            out.append(f"{key}={value}")
        elif eq and not arg.startswith("-") and (renamed := _renamed(name, value, flags)):
            use = " ".join(renamed)
            print(f"warning: {name}= is deprecated in {command}; use {use}", file=sys.stderr)
            out += renamed
        elif free and not arg.startswith("-") and "=" not in arg:
            key = free.pop(0)
            print(
                f"warning: a bare {key} is deprecated in {command}; use {key}={arg}",
                file=sys.stderr,
            )
            out.append(f"{key}={arg}")
        else:
            out.append(arg)
        i += 1
    return out


def _renamed(key: str, value: str, renames: dict[str, Any]) -> list[str] | None:
    """``key=value`` under its new name(s) (``translate_legacy_args``), or None if not renamed."""
    for old, new in renames.items():
        if old.startswith("-"):
            continue
        if old.endswith(".") and key.startswith(old):
            return [f"{new}{key[len(old) :]}={value}"]
        if key == old:
            if callable(new):
                replaced = new(value)
                return None if replaced is None else list(replaced)
            return [new.format(value) if "{}" in new else f"{new}={value}"]
    return None


def _group_options(
    config_file: Path, group: str, default: str | None, module: str = ""
) -> list[str]:
    """The options of ``group`` beside its ``default`` (``model: stn/paper`` -> ``stn/*``), in
    the command's config tree and in ``common``'s shared groups; an experiment recorded for
    another command (``experiment_for``) is not one of this command's."""
    from importlib.resources import files

    sub = str(Path(default).parent) if default and "/" in default else ""
    names = set()
    for root in (config_file.parent, Path(str(files("common.conf")))):
        folder = root / group / sub
        for path in folder.glob("*.yaml"):
            meant = _yaml(path).get("experiment_for") if module else None
            if not meant or meant == module:
                names.add(str(Path(sub) / path.stem) if sub else path.stem)
    return sorted(names)


def command_help(config_file: Path, module: str, overrides: Sequence[str]) -> str:
    """``--help`` of a command: what its config file's header says, the groups of this command
    (not every group of the package's tree, as Hydra's own help lists), how to set keys, and the
    config composed with ``overrides``."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    header = []
    for line in config_file.read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line.lstrip("#").strip())
    lines = [f"python -m {module}", *[f"  {h}" for h in header if h], ""]
    entries = [*_defaults(config_file), ("hydra/launcher", "basic")]
    lines.append("Config groups, chosen with group=option (* the default):")
    for group, default in entries:
        options = _group_options(config_file, group, default, module)
        if group == "hydra/launcher":
            options = sorted({"basic", *options})
        shown = [f"{o}*" if o == default else o for o in options]
        lines.append(f"  {group}: {', '.join(shown) or '(none)'}" + ("" if default else " (none*)"))
    lines += [
        "",
        "Every key below is set with key=value (nested keys a.b=value, lists [1,2]); ++key=value",
        "adds one. --cfg job prints the composed config, -m runs a sweep over comma-separated",
        "values, -sc install=bash installs tab completion, --hydra-help shows Hydra's own help.",
        "",
        "== Config ==",
    ]
    keep = [a for a in overrides if "=" in a and not a.startswith("-")]
    with initialize_config_dir(config_dir=str(config_file.parent), version_base="1.3"):
        cfg = compose(config_name=config_file.stem, overrides=keep)
    return "\n".join(lines) + "\n" + OmegaConf.to_yaml(cfg)


def hydra_main(
    config_name: str,
    config_path: str = "conf",
    input_paths: Sequence[str] = (),
    checks: dict[str, str] | None = None,
    aliases: dict[str, str] | None = None,
    legacy_flags: dict[str, Any] | None = None,
    legacy_positional: Sequence[str] = (),
) -> Callable[[Callable[[Any], Any]], Callable[[], Any]]:
    """``@hydra_main("train", input_paths=("resume",), checks={"batch_size": "int>=1"})`` over a
    command's ``main(cfg)``; ``checks`` are ``common.errors.check_values`` rules, applied to the
    composed config before the command runs; ``aliases`` maps other spellings of a key to it
    (``{"model": "arch"}``: the official DiT scripts' ``--model DiT-XL/2``); ``legacy_flags`` and
    ``legacy_positional`` keep a former argparse interface working for one release
    (:func:`translate_legacy_args`)."""
    import hydra

    def decorator(task: Callable[[Any], Any]) -> Callable[[], Any]:
        @functools.wraps(task)
        def task_with_paths(cfg: Any) -> Any:
            try:
                absolute_input_paths(cfg, input_paths)
                check_experiment_for(cfg, task.__module__)
                check_values(cfg, checks or {})
                return task(cfg)
            except Exception as err:
                if os.environ.get(_FULL_ERROR) == "1" or not is_user_error(err):
                    raise
                job = (hydra_job() or {}).get("num")
                if job is None:  # reported by main() once Hydra has returned: one line only
                    _pending.append(err)
                    return None
                print_error(err, prefix=f"job {job}: ")  # say it now; the sweep goes on
                raise HydraJobFailures(
                    "jobs of the sweep failed (their errors are above, and in each job's "
                    "job.json); fix them and rerun the same command to finish the sweep"
                ) from err

        hydra_entry = hydra.main(
            version_base="1.3", config_path=config_path, config_name=config_name
        )(task_with_paths)
        config_file = Path(inspect.getfile(task)).parent / config_path / f"{config_name}.yaml"

        @functools.wraps(task)
        def main() -> Any:
            args = sys.argv[1:]
            if legacy_flags or legacy_positional:
                try:
                    args = translate_legacy_args(
                        args, legacy_flags, legacy_positional, f"python -m {task.__module__}"
                    )
                except ValueError as err:
                    print_error(err)
                    sys.exit(2)
            debug = any(a in _DEBUG for a in args)
            sys.argv[1:] = normalize_overrides(
                [a for a in args if a not in _DEBUG], default_groups(config_file), aliases
            )
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
            if inherited is not None:
                full_error = debug or inherited == "1"
            else:
                full_error = debug or os.environ.get("HYDRA_FULL_ERROR") == "1"
            previous = {k: os.environ.get(k) for k in (_FULL_ERROR, "HYDRA_FULL_ERROR")}
            os.environ[_FULL_ERROR] = "1" if full_error else "0"
            os.environ["HYDRA_FULL_ERROR"] = "1"  # errors reach exit_on_user_errors unprinted
            try:
                result = exit_on_user_errors(hydra_entry, full_error=full_error)
                if _pending:
                    print_error(_pending.pop())
                    sys.exit(2)
                return result
            finally:
                _pending.clear()
                for key, value in previous.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value

        return main

    return decorator
