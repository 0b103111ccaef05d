"""Shared pieces of the DiT, G.pt and GANgealing packages.

``nn/`` (blocks, embedders, flop counting), ``diffusion/`` (Gaussian diffusion, respacing,
samplers, rectified flow, guidance), ``training/`` (trainer, runs, EMA, guards, strategies,
loggers, throughput), ``data/`` (the digits, image I/O), ``metrics/`` (FID, IS, precision/recall);
at the top level what every command uses: ``cli``, ``config``, ``errors``, ``checkpoint``,
``devices``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

__version__ = "0.1.0"

#: Modules that moved into the subpackages; their former names import for one release, with a
#: DeprecationWarning, as the same module objects (so ``_target_`` paths in saved configs resolve).
MOVED = {
    "common.layers": "common.nn.layers",
    "common.flops": "common.nn.flops",
    "common.guidance": "common.diffusion.guidance",
    "common.digits": "common.data.digits",
    "common.images": "common.data.images",
    "common.runs": "common.training.runs",
    "common.ema": "common.training.ema",
    "common.guards": "common.training.guards",
    "common.strategies": "common.training.strategies",
    "common.loggers": "common.training.loggers",
    "common.throughput": "common.training.throughput",
}


_moved: dict[str, str] = dict(MOVED)  # every package's former names (``register_moved``)


def register_moved(moved: dict[str, str]) -> None:
    """Let a package's former module names (``{"pkg.old": "pkg.new.place"}``) import for one
    release as their new modules, with a DeprecationWarning; called from the package's
    ``__init__``, so ``import pkg.old`` finds them."""
    _moved.update(moved)


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Import a former name of ``MOVED`` as its new module (the module object itself)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in _moved:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        warnings.warn(
            f"{spec.name} moved to {_moved[spec.name]}; import it from there (the old name goes "
            "in the next release)",
            DeprecationWarning,
            stacklevel=2,
        )
        module = importlib.import_module(_moved[spec.name])
        self._own_spec = module.__spec__  # importlib sets __spec__ to the alias: put it back
        return module

    def exec_module(self, module) -> None:
        module.__spec__ = self._own_spec


if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
    sys.meta_path.append(_MovedModules())
