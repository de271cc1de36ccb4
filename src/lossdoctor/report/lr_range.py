"""Report section for the LR range test.

The loss-vs-lr curve with the suggestion marked, and training at the suggested lr against 10x below
and above."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._results import fmt
from ..studies.lr_range import MULTIPLIERS, LRRangeStudy
from ..training.lr_finder import LRRangeResult
from .figures import new_figure, save, save_new
from .html import Section, figure, paragraph, table


def draw_range_test(ax, result: LRRangeResult) -> None:
    """Draw the loss-vs-lr curve of ``result`` on ``ax`` (log lr), with the suggested lr marked."""
    ax.plot(result.lrs, result.losses, color="0.7", lw=0.8, label="batch loss")
    ax.plot(result.lrs, result.smoothed_losses, color="C0", lw=1.8, label="smoothed")
    if result.suggested_lr is not None:  # an interrupted test suggests nothing
        ax.axvline(
            result.suggested_lr,
            color="C2",
            ls="--",
            label=f"suggested lr {fmt(result.suggested_lr, 3)} ({result.suggestion})",
        )
        ax.axvline(
            result.minimum_lr,
            color="C3",
            ls=":",
            label=f"lowest loss at {fmt(result.minimum_lr, 3)}",
        )
    ax.set_xscale("log")
    top = float(np.percentile(result.losses, 95))
    ax.set_ylim(min(result.losses) * 0.9, top * 1.15)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(
        "LR range test"
        + (
            " (stopped: diverged)"
            if result.diverged
            else " (INTERRUPTED)"
            if result.interrupted
            else ""
        ),
        fontsize=10,
    )
    ax.legend(fontsize=8)


def range_test_figure(result: LRRangeResult, path: Path) -> Path:
    """The loss-vs-lr curve alone, saved to ``path`` (for the CLI)."""
    fig, (ax,) = new_figure(1)
    draw_range_test(ax, result)
    return save_new(fig, path)


def render(study: LRRangeStudy, out_dir: Path) -> Section:
    """The report section for the LR range test: its figures (PNGs written to ``out_dir``), tables and text."""
    fig, (ax_rt, ax_train, ax_test) = new_figure(3, width=4.6, height=3.7)
    draw_range_test(ax_rt, study.range_test)
    for i, m in enumerate(MULTIPLIERS):
        for j, t in enumerate(study.of(m)):
            # one color per multiplier, labelled once; the same style in both panels
            style = {"color": f"C{i}", "marker": "o", "ms": 3}
            if j == 0:
                style["label"] = f"{m:g}x (lr {fmt(t.lr, 3)})"
            epochs = np.arange(1, t.history.epochs + 1)
            ax_train.plot(epochs, t.history.epoch_train_loss, **style)
            if t.history.epoch_test_accuracy and t.history.epoch_test_accuracy[0] is not None:
                ax_test.plot(epochs, t.history.epoch_test_accuracy, **style)
    ax_train.set_yscale("log")
    for ax, label in ((ax_train, "training loss (full data)"), (ax_test, "test accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_title(f"{label} from the same initial weights", fontsize=10)
        ax.legend(fontsize=8)
    name = save(fig, out_dir, "lr-range.png")
    rows = [
        (
            f"{t.multiplier:g}x",
            fmt(t.lr, 3),
            t.seed,
            f"{t.final_train_loss:.4f}",
            "-" if t.final_test_loss is None else f"{t.final_test_loss:.4f}",
            "-" if t.final_test_accuracy is None else f"{t.final_test_accuracy:.1%}",
        )
        for t in study.trials
    ]
    rt = study.range_test
    text = (
        f"Range test on {study.problem} with {study.optimizer}, batch {study.batch_size}: "
        f"{rt.steps_run} steps from lr {fmt(rt.start_lr)} to {fmt(rt.end_lr)}"
        + (" (stopped early when the loss diverged)" if rt.diverged else "")
        + f". Suggested lr {fmt(rt.suggested_lr, 3)} (steepest descent of the smoothed loss); the lowest "
        f"loss was at lr {fmt(rt.minimum_lr, 3)}. The range test left the model's weights and the "
        f"optimizer {'unchanged' if study.model_unchanged else 'CHANGED (a bug)'}. Then {study.epochs} "
        f"epochs of training from the same initial weights at 0.1x, 1x and 10x the suggestion, seeds "
        f"{study.seeds}."
    )
    body = (
        paragraph(text)
        + table(["lr", "value", "seed", "final train loss", "test loss", "test accuracy"], rows)
        + figure(
            name,
            "Left: loss against lr during the range test (grey: per batch; blue: smoothed "
            "without lag), with the suggested lr. Middle and right: training at the suggestion "
            "and 10x below and above.",
        )
    )
    return Section("lr-range", "Learning-rate range test on MNIST-1D", body)
