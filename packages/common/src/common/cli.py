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

_APPEND = re.compile(r"^\+{1,2}(?P<group>[A-Za-z_][\w]*)=(?P<value>.*)$")
_NULL = re.compile(r"^(?P<group>[A-Za-z_][\w]*)=(null|None|~)$")


def default_groups(config_file: Path) -> set[str]:
    """The config groups listed in the defaults list of a primary config file."""
    from omegaconf import OmegaConf

    if not config_file.is_file():
        return set()
    defaults = OmegaConf.to_container(OmegaConf.load(config_file)).get("defaults") or []
    groups = set()
    for entry in defaults:
        if isinstance(entry, dict):
            for key in entry:
                name = key.split()[-1].lstrip("/")
                if "/" not in name and name != "_self_":
                    groups.add(name)
    return groups


def normalize_overrides(args: Sequence[str], groups: Iterable[str]) -> list[str]:
    """Rewrite ``+group=x`` to ``group=x`` and ``group=null`` to ``~group`` for the groups of the
    primary config's defaults list; every other argument is kept as it is."""
    groups = set(groups)
    out = []
    for arg in args:
        if (m := _APPEND.match(arg)) and m["group"] in groups:
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


def hydra_main(
    config_name: str, config_path: str = "conf", input_paths: Sequence[str] = ()
) -> Callable[[Callable[[Any], Any]], Callable[[], Any]]:
    """``@hydra_main("train", input_paths=("resume",))`` over a command's ``main(cfg)``."""
    import hydra

    def decorator(task: Callable[[Any], Any]) -> Callable[[], Any]:
        @functools.wraps(task)
        def task_with_paths(cfg: Any) -> Any:
            absolute_input_paths(cfg, input_paths)
            return task(cfg)

        hydra_entry = hydra.main(
            version_base="1.3", config_path=config_path, config_name=config_name
        )(task_with_paths)
        config_file = Path(inspect.getfile(task)).parent / config_path / f"{config_name}.yaml"

        @functools.wraps(task)
        def main() -> Any:
            sys.argv[1:] = normalize_overrides(sys.argv[1:], default_groups(config_file))
            return hydra_entry()

        return main

    return decorator
