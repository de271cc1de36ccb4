"""Matplotlib set-up shared by every figure.

One style, a headless backend unless the user chose one, and one way to save.

Matplotlib (the ``report`` extra) is imported when a figure is drawn, not when this module is, and
the backend is chosen then: Agg (files only, no window) unless a backend was already chosen
(``MPLBACKEND``, a matplotlibrc, ``matplotlib.use`` or an imported pyplot). The style applies to
lossdoctor's own figures only (``rc_context``), never to the user's.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from .._extras import require

STYLE = {
    "figure.dpi": 100,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
SAVE_DPI = 110


def pyplot() -> ModuleType:
    """``matplotlib.pyplot``, with the Agg backend when nothing else was chosen."""
    matplotlib = require("matplotlib", "drawing figures")
    chosen = getattr(matplotlib.rcParams, "_get_backend_or_none", lambda: None)()
    if chosen is None and "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def new_figure(ncols: int = 1, width: float = 5.5, height: float = 3.8) -> tuple[Any, list[Any]]:
    """A new figure with ``ncols`` axes side by side, each ``width`` x ``height`` inches."""
    plt = pyplot()
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    return fig, list(axes[0])


def _writer(fig, path: Path):
    fmt = path.suffix.lstrip(".").lower() or "png"
    return lambda stream: fig.savefig(stream, format=fmt, dpi=SAVE_DPI)


def save(fig, out_dir: Path, name: str) -> str:
    """Save ``fig`` as ``out_dir/name`` and close it; returns the relative file name.

    The write is atomic inside ``out_dir`` (a report folder): a temporary file, then a rename that
    replaces a planted symlink instead of writing through it."""
    from .._files import atomic_write

    try:
        fig.tight_layout()
        atomic_write(out_dir, name, _writer(fig, Path(name)))
    finally:
        pyplot().close(fig)
    return name


def save_new(fig, path: Path) -> Path:
    """Save ``fig`` to a new file at ``path`` (never over an existing file) and close it.

    Returns where it was written: ``path``, or a place beside it when ``path`` could not be written."""
    from .._files import save_new as write_new

    try:
        fig.tight_layout()
        written, _ = write_new(Path(path), _writer(fig, Path(path)))
    finally:
        pyplot().close(fig)
    return written
