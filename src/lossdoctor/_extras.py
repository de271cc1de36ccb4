"""Optional dependencies.

The core needs torch, numpy and scipy only; drawing (matplotlib), the command line (click, rich) and
the built-in MNIST-1D data (mnist1d) come with extras. A missing one is named with the command that
installs it."""

from __future__ import annotations

import importlib
from types import ModuleType

# module -> the extra that installs it
EXTRAS = {"matplotlib": "report", "click": "cli", "rich": "cli", "mnist1d": "data"}


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""


def missing(module: str, what: str) -> MissingExtraError:
    """The error for ``what`` needing ``module``, which is not installed."""
    extra = EXTRAS.get(module.split(".")[0], "all")
    return MissingExtraError(
        f"{what} needs {module.split('.')[0]}, which is not installed: "
        f"pip install 'lossdoctor[{extra}]' (or 'lossdoctor[all]')."
    )


def require(module: str, what: str) -> ModuleType:
    """``import module``, or a :class:`MissingExtraError` naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name is not None and err.name.split(".")[0] == module.split(".")[0]:
            raise missing(module, what) from err
        raise
