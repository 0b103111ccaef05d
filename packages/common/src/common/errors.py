"""Errors a user can act on, and the one line the command-line tools print for them.

Every command prints ``error: <what>; <what to do>`` and exits with code 2 for these (no
traceback unless ``HYDRA_FULL_ERROR=1`` or ``debug=true``): the project's own checks raise
``ValueError``/``FileNotFoundError``/``KeyError`` (or the subclasses here) with that message, and
the common foreign failures (missing files, unreadable images, bad archives, Hydra and OmegaConf
configuration errors) are caught as well. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any


class NonFiniteError(RuntimeError):
    """Training produced NaN or inf (loss, gradients, a sampling grid, a tensor about to be
    saved); the message names where and what to try."""


class FileReadError(OSError):
    """A data file that could not be read or decoded, whatever the decoder raised; the message
    names the file and the reason. The decoder's error stays chained (``debug=true`` shows it)."""


@contextmanager
def reading(path: str | os.PathLike, what: str = "", hint: str = "replace or remove that file"
            ) -> Iterator[None]:  # fmt: skip
    """Turn any failure inside the block into one :class:`FileReadError` naming ``path``: data
    loading (in a ``DataLoader`` worker or not) then always ends in one ``error:`` line."""
    try:
        yield
    except FileReadError:
        raise
    except Exception as err:  # noqa: BLE001 (a decoder may raise anything; the file is the news)
        said = re.sub(rf":?\s*'?{re.escape(str(path))}'?", "", one_line(err)).strip()  # once
        if not is_user_error(err):  # a foreign type says what kind of failure it is
            said = (
                f"no entry {said!r}"
                if isinstance(err, KeyError)
                else f"{type(err).__name__}: {said}"
            )
        reason = said.strip(": ")
        raise FileReadError(f"cannot read {what}{path} ({reason}); {hint}") from err


def user_error_types() -> tuple[type[BaseException], ...]:
    """The exception types reported as one line instead of a traceback."""
    import zipfile

    types: list[type[BaseException]] = [
        ValueError,
        KeyError,
        OSError,  # FileNotFoundError, IsADirectoryError, PermissionError, PIL's unreadable images
        EOFError,
        zipfile.BadZipFile,
        NonFiniteError,
    ]
    try:
        from omegaconf.errors import OmegaConfBaseException

        types.append(OmegaConfBaseException)
    except ImportError:  # pragma: no cover
        pass
    try:
        from hydra.errors import HydraException

        types.append(HydraException)
    except ImportError:  # pragma: no cover
        pass
    # Lightning's own "your Trainer arguments do not fit" (devices, precision, strategy), when
    # Lightning is loaded: importing it here, at error time, would only slow the error down.
    lightning = sys.modules.get("lightning.fabric.utilities.exceptions")
    if lightning is not None:
        types.append(lightning.MisconfigurationException)
    return tuple(types)


def root_cause(err: BaseException) -> BaseException:
    """The innermost ``__cause__`` (Hydra wraps errors raised while instantiating or in a job),
    or a :class:`FileReadError`, whose message already says what its cause was."""
    while not isinstance(err, FileReadError) and err.__cause__ not in (None, err):
        err = err.__cause__
    return err


_NOISE = ("full_key:", "object_type=", "reference_type=", "Set the environment variable")


def _config_hint(cause: BaseException) -> str:
    """What to do about an OmegaConf error raised while reading a command's config."""
    from omegaconf.errors import ConfigKeyError, MissingMandatoryValue

    key = getattr(cause, "full_key", None)
    if m := _MISSING.search(str(cause)):  # e.g. Hydra's run folder is ${out}
        return f"; pass {m['key']}=<value> on the command line"
    if isinstance(cause, MissingMandatoryValue) and key:
        return f"; pass {key}=<value> on the command line"
    if isinstance(cause, ConfigKeyError) and key:
        return f"; check the spelling of {key} (--help or --cfg job lists the command's keys)"
    return ""


_MISSING = re.compile(r"while resolving interpolation: Missing mandatory value: (?P<key>[\w.]+)")
_NOT_A_KEY = re.compile(r"Could not override '(?P<key>[^']+)'\. To append to your config use \+")
_WORKER = "Original Traceback (most recent call last):"
_EXCEPTION_LINE = re.compile(r"^[\w.]+(Error|Exception|Interrupt|Exit): ")


def _clean(text: str) -> str:
    """One line of ``text``: OmegaConf's key dumps and Hydra's search-path listing dropped; an
    error re-raised from a ``DataLoader`` worker (torch's ``ExceptionWrapper``) is its own
    message, without the worker's traceback."""
    text = str(text).split("Config search path:")[0]
    if _WORKER in text:
        last = [ln for ln in text.split(_WORKER, 1)[1].splitlines() if ln.strip()][-1].strip()
        text = _EXCEPTION_LINE.sub("", last, count=1)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    text = " ".join(ln for ln in lines if not ln.startswith(_NOISE))
    if m := _NOT_A_KEY.search(text):  # Hydra's advice (+key=) adds a key that nothing reads
        text = (
            f"{m['key']} is not a key of this command; check its spelling (--help or --cfg job "
            f"lists the keys), or add a new one with +{m['key']}=<value> if your code reads it"
        )
    return text


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line, without OmegaConf's key dumps: the root cause's, with
    Hydra's own explanation in front of a configuration error it wraps."""
    cause = root_cause(err)
    text = _clean(cause.args[0] if isinstance(cause, KeyError) and cause.args else cause)
    if isinstance(cause, OSError) and cause.filename and str(cause.filename) not in text:
        text = f"{text}: {cause.filename}"
    try:
        from hydra.errors import ConfigCompositionException, OverrideParseException

        wrappers = (ConfigCompositionException, OverrideParseException)
        if isinstance(err, wrappers) and cause is not err:
            text = f"{_clean(err)} ({text})"
        text += _config_hint(cause)
    except ImportError:  # pragma: no cover
        pass
    return text or type(cause).__name__


def is_user_error(err: BaseException) -> bool:
    """Whether ``err`` is reported as one line: its root cause is one of
    :func:`user_error_types` (a ``KeyError`` only with a sentence for a message: a bare missing
    key is a bug)."""
    cause = root_cause(err)
    if isinstance(cause, KeyError) and not (cause.args and " " in str(cause.args[0])):
        return False
    return isinstance(cause, user_error_types())


def refuse_unused(cfg: Any, defaults: Any, unused: dict[str, tuple[str, str]]) -> None:
    """Refuse each key of ``unused`` (``key: (why it is ignored, what to do instead)``) whose
    value in ``cfg`` differs from ``defaults``, both as written (interpolations unresolved): keys
    that a combination ignores are refused, not ignored (issue 28)."""
    from omegaconf import OmegaConf

    given, default = (OmegaConf.to_container(c, resolve=False) for c in (cfg, defaults))
    for key, (why, fix) in unused.items():
        value = _dotted(given, key)
        if value != _dotted(default, key):
            value = str(value).lower() if isinstance(value, bool) else value
            raise ValueError(f"{key}={value} is ignored because {why}; drop it, or {fix}")


def _dotted(tree: Any, key: str) -> Any:
    for part in key.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


# ----------------------------------------------------------------------------- value checks
def require_finite(name: str, value: Any) -> float:
    """``value`` as a finite float, or a ``ValueError`` naming ``name``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r} is not a number; pass a finite number") from None
    if not math.isfinite(number):
        raise ValueError(f"{name}={value} is not finite; pass a finite number")
    return number


def require_positive_int(name: str, value: Any, allow_none: bool = False) -> int | None:
    """A whole number ``>= 1`` (or ``None`` when ``allow_none``)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise ValueError(f"{name}={value!r} is not a whole number; pass {name}=<integer >= 1>")
    if value < 1:
        extra = " or leave it unset (null) for the default" if allow_none else ""
        raise ValueError(f"{name}={value} must be at least 1; pass {name} >= 1{extra}")
    return int(value)


def require_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(map(str, choices))}")
    return value


def _rule_ok(value: Any, rule: str) -> bool:
    if rule.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            return False
        rule = rule[3:]
    if rule.startswith(">="):
        return value >= float(rule[2:])
    if rule.startswith(">"):
        return value > float(rule[1:])
    low, high = (float(x) for x in rule[1:-1].split(","))
    above = value >= low if rule[0] == "[" else value > low
    below = value <= high if rule[-1] == "]" else value < high
    return above and below


def _describe(rule: str) -> str:
    kind, rest = ("a whole number", rule[3:]) if rule.startswith("int") else ("a number", rule)
    if rest.startswith((">=", ">")):
        op = ">=" if rest.startswith(">=") else ">"
        return f"{kind} {op} {rest[len(op) :]}"
    return f"{kind} in {rest[0]}{rest[1:-1].replace(',', ', ')}{rest[-1]}"


def check_values(cfg: Any, rules: dict[str, str]) -> None:
    """Refuse values that make no sense, where a command reads its config. ``rules`` maps dotted
    keys to ``"int>=1"``, ``">0"``, ``">=0"``, ``"[0,1]"``, ``"(0,1]"`` (``int`` prefix: a whole
    number), with ``"|null"`` when the key may stay unset (null or absent) and ``"|absent"`` when
    it may be absent from the config (a group option without it) but not null. Every number must
    be finite. A list value is checked element by element."""
    from omegaconf import ListConfig, OmegaConf

    absent = object()
    for key, spec in rules.items():
        rule, _, flag = spec.partition("|")
        value = OmegaConf.select(cfg, key, default=absent)
        if value is absent and flag:
            continue
        want = _describe(rule) + (" (or null for the default)" if flag == "null" else "")
        if value is None or value is absent:
            if flag == "null":
                continue
            raise ValueError(f"{key} is not set; pass {key}=<{want}>")
        listed = isinstance(value, (list, tuple, ListConfig))
        for i, item in enumerate(value if listed else [value]):
            number_like = isinstance(item, (int, float)) and not isinstance(item, bool)
            if not number_like or not math.isfinite(float(item)) or not _rule_ok(item, rule):
                shown = f"{key}[{i}]={item!r}" if listed else f"{key}={value!r}"
                raise ValueError(f"{shown} makes no sense here; pass {key}=<{want}>")
