"""Report section for flat vs. sharp.

The interpolation between the small- and large-batch solutions and filter-normalized 1-D and 2-D
landscapes around each, train and test together."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .._results import fmt
from ..analysis.landscape import Landscape
from ..studies.flat_sharp import FlatSharpStudy, wall_rise
from .figures import new_figure, save, save_new
from .html import Section, figure, paragraph


def _percent(values: list[float | None] | None) -> list[float]:
    """Accuracies in percent (NaN where there is none)."""
    return [math.nan if a is None else 100 * a for a in values or []]


def _line(ax, land: Landscape, title: str) -> None:
    ax.plot(land.coords, land.train_loss, color="C0", label="train loss")
    if land.test_loss is not None:
        ax.plot(land.coords, land.test_loss, color="C3", ls="--", label="test loss")
    ax.set_yscale("log")
    ax.set_xlabel("step along a filter-normalized direction")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)


def _plane(ax, land: Landscape, title: str, levels: np.ndarray) -> None:
    c = np.asarray(land.coords)
    train = np.log10(np.asarray(land.train_loss, dtype=float))
    cs = ax.contour(c, c, train.T, levels=levels, cmap="viridis", linewidths=0.9)
    ax.clabel(cs, fontsize=6, fmt=lambda v: f"{10**v:.2g}")
    if land.test_loss is not None:
        test = np.log10(np.asarray(land.test_loss, dtype=float))
        ax.contour(c, c, test.T, levels=levels, colors="C3", linestyles="dashed", linewidths=0.6)
    ax.plot([0], [0], "k+")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("direction 1")
    ax.set_ylabel("direction 2")


def render(study: FlatSharpStudy, out_dir: Path) -> Section:
    """The report section for flat vs. sharp: its figures (PNGs written to ``out_dir``), tables and text."""
    s, b = study.small_batch, study.large_batch
    fig, (ax,) = new_figure(1, width=7, height=3.8)
    cv = study.curve
    ax.plot(cv.alphas, cv.train_loss, color="C0", label="train loss")
    ax.plot(cv.alphas, cv.test_loss, color="C3", ls="--", label="test loss")
    ax.set_yscale("log")
    ax.set_xlabel(f"alpha: 0 = batch {s} solution, 1 = batch {b} solution")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    ax2.plot(cv.alphas, _percent(cv.train_accuracy), color="C0", lw=0.7, alpha=0.5)
    ax2.plot(cv.alphas, _percent(cv.test_accuracy), color="C3", lw=0.7, ls="--", alpha=0.5)
    ax2.set_ylabel("accuracy % (thin lines)")
    ax2.grid(False)
    for x in (0, 1):
        ax.axvline(x, color="k", lw=0.5)
    ax.legend(fontsize=8)
    interp = save(fig, out_dir, "flat-sharp-interpolation.png")
    fig, (a1, a2) = new_figure(2, width=5.2, height=3.6)
    _line(a1, study.line_small, f"around the batch-{s} solution")
    _line(a2, study.line_large, f"around the batch-{b} solution")
    lo = min(min(a1.get_ylim()[0], a2.get_ylim()[0]), 1e9)
    hi = max(a1.get_ylim()[1], a2.get_ylim()[1])
    a1.set_ylim(lo, hi)
    a2.set_ylim(lo, hi)
    lines = save(fig, out_dir, "flat-sharp-1d.png")
    fig, (p1, p2) = new_figure(2, width=5.0, height=4.4)
    both = np.log10(
        np.concatenate(
            [np.ravel(study.plane_small.train_loss), np.ravel(study.plane_large.train_loss)]
        )
    )
    levels = np.linspace(both.min(), np.percentile(both, 95), 10)
    _plane(p1, study.plane_small, f"batch {s}: train (solid), test (red dashed)", levels)
    _plane(p2, study.plane_large, f"batch {b}: train (solid), test (red dashed)", levels)
    planes = save(fig, out_dir, "flat-sharp-2d.png")
    rise_s, rise_l = wall_rise(study.line_small), wall_rise(study.line_large)
    i_peak = int(np.argmax(cv.train_loss[: len(cv.alphas)]))
    text = (
        f"Seed {study.seed}: the batch-{s} and batch-{b} runs of the sweep, from the same initial weights, at "
        f"{study.milestone}. lambda_max {fmt(study.small_lambda_max)} vs {fmt(study.large_lambda_max)}, "
        f"eps-sharpness {fmt(study.small_epsilon)} vs {fmt(study.large_epsilon)}. Along the line between them "
        f"(||theta_b - theta_a|| = {fmt(cv.distance)}) the training loss is {fmt(cv.train_loss[cv.alphas.index(0.0)] if 0.0 in cv.alphas else cv.train_loss[0])} "
        f"at the small-batch end and peaks at {fmt(cv.train_loss[i_peak])} (alpha = {cv.alphas[i_peak]:.2f}). "
        f"In the filter-normalized 1-D landscapes (Li et al. 2018: each filter of a random direction scaled to the "
        f"norm of the same filter of the weights, biases held fixed) the training loss rises on average by "
        f"{fmt(rise_s)} at the ends (±1) around the batch-{s} solution and by {fmt(rise_l)} around the "
        f"batch-{b} solution: {'the small-batch minimum is the wider one' if rise_s < rise_l else 'the large-batch minimum is not the sharper one here'}. "
        "The test loss (dashed) sits above and beside the training loss: where the surface is flat, that shift "
        "costs little."
    )
    body = (
        paragraph(text)
        + figure(
            interp,
            "Train and test loss (and accuracy, thin lines) along theta(alpha) = (1 - alpha) theta_small "
            "+ alpha theta_large, alpha from -0.5 to 1.5 (Keskar et al.'s Figure 3).",
        )
        + figure(
            lines,
            "Filter-normalized 1-D landscapes around each solution (same random direction seed, same "
            "axes): train (solid) and test (dashed) loss.",
        )
        + figure(
            planes,
            "Filter-normalized 2-D landscapes: contours of log10 training loss (labelled with the "
            "loss) and, dashed red, the test loss at the same levels.",
        )
    )
    return Section(
        "flat-sharp", "Batch size III: flat vs. sharp minima (interpolation and landscapes)", body
    )


def landscape_figure(land: Landscape, path: Path, title: str = "") -> Path:
    """A 1-D curve or 2-D contour plot of one landscape, saved to ``path``."""
    fig, (ax,) = new_figure(1, width=5.5, height=4.2)
    if land.dims == 1:
        _line(ax, land, title or f"{land.normalization}-normalized direction")
    else:
        loss = np.log10(np.asarray(land.train_loss, dtype=float))
        _plane(
            ax,
            land,
            title or "train (solid), test (red dashed)",
            np.linspace(loss.min(), np.percentile(loss, 95), 10),
        )
    return save_new(fig, path)


def curve_figure(curve, path: Path) -> Path:
    """The interpolation curve alone, saved to ``path``."""
    fig, (ax,) = new_figure(1, width=6, height=3.8)
    ax.plot(curve.alphas, curve.train_loss, color="C0", label="train loss")
    if curve.test_loss is not None:
        ax.plot(curve.alphas, curve.test_loss, color="C3", ls="--", label="test loss")
    ax.set_yscale("log")
    ax.set_xlabel("alpha: 0 = model A, 1 = model B")
    ax.legend(fontsize=8)
    return save_new(fig, path)
