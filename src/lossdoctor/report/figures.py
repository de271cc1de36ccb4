"""Matplotlib set-up shared by every figure: a headless backend and one way to save."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 110, "axes.grid": True, "grid.alpha": 0.3,
                     "axes.spines.top": False, "axes.spines.right": False})


def new_figure(ncols: int = 1, width: float = 5.5, height: float = 3.8):
    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    return fig, list(axes[0])


def _writer(fig, path: Path):
    fmt = path.suffix.lstrip(".").lower() or "png"
    return lambda stream: fig.savefig(stream, format=fmt)


def save(fig, out_dir: Path, name: str) -> str:
    """Save ``fig`` as ``out_dir/name`` and close it; returns the relative file name. The write is
    atomic inside ``out_dir`` (a report folder): a temporary file, then a rename that replaces a
    planted symlink instead of writing through it."""
    from .._files import atomic_write

    try:
        fig.tight_layout()
        atomic_write(out_dir, name, _writer(fig, Path(name)))
    finally:
        plt.close(fig)
    return name


def save_new(fig, path: Path) -> Path:
    """Save ``fig`` to a new file at ``path`` (never over an existing file) and close it; returns
    where it was written: ``path``, or a place beside it when ``path`` could not be written."""
    from .._files import save_new as write_new

    try:
        fig.tight_layout()
        written, _ = write_new(Path(path), _writer(fig, Path(path)))
    finally:
        plt.close(fig)
    return written
