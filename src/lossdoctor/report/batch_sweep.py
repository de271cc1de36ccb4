"""Report section for the batch-size sweep.

Accuracy and sharpness against batch size at equal epochs, equal updates and matched training loss,
the sweep table, and the three verdicts."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..studies.batch_sweep import BatchSweepStudy
from .batch_time import batch_axis
from .figures import new_figure, save
from .html import Section, figure, paragraph, table

PANELS = (
    ("train_accuracy", "train accuracy", True),
    ("test_accuracy", "test accuracy", True),
    ("lambda_max", "lambda_max (top Hessian eigenvalue)", False),
    ("epsilon_sharpness", "Keskar eps-sharpness (eps = 1e-3)", False),
)


def _cell(row: dict, name: str, pct: bool = False) -> str:
    v, s = row[name], row[name + "_std"]
    if v is None:
        return "-"
    if pct:
        return f"{100 * v:.1f} ± {100 * (s or 0):.1f}%"
    return f"{v:.3g} ± {s or 0:.2g}"


def render(study: BatchSweepStudy, out_dir: Path) -> Section:
    """The report section for the batch-size sweep: its figures (PNGs written to ``out_dir``), tables and text."""
    sweep = study.sweep
    fig, axes = new_figure(4, width=3.6, height=3.4)
    for k, label in enumerate(sweep.labels):
        by_size = sweep.table(label)
        for ax, (name, title, pct) in zip(axes, PANELS):
            pts = [
                (r["batch_size"], r[name], r[name + "_std"]) for r in by_size if r[name] is not None
            ]
            if not pts:
                continue
            sizes, values, stds = map(np.array, zip(*pts))
            scale = 100 if pct else 1
            ax.errorbar(
                sizes * (1 + 0.04 * (k - 1)),
                values * scale,
                yerr=stds * scale,
                marker="os^d"[k % 4],
                capsize=2,
                color=f"C{k}",
                label=label,
            )
            ax.set_title(title, fontsize=9)
    for ax in axes:
        batch_axis(ax, sweep.batch_sizes)
        ax.set_xlabel("batch size")
    axes[0].legend(fontsize=7)
    name = save(fig, out_dir, "batch-sweep.png")
    fig, (ax,) = new_figure(1, width=7, height=3.6)
    for i, b in enumerate(sweep.batch_sizes):
        for j, r in enumerate(x for x in sweep.runs if x.batch_size == b):
            ax.plot(
                r.curve["epoch"],
                r.curve["train_loss"],
                color=f"C{i}",
                lw=0.9,
                label=f"batch {b} train" if j == 0 else None,
            )
            ax.plot(
                r.curve["epoch"],
                r.curve["test_loss"],
                color=f"C{i}",
                lw=0.9,
                ls="--",
                label=f"batch {b} test" if j == 0 else None,
            )
    ax.set_xscale("symlog", linthresh=1)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (full data)")
    ax.legend(fontsize=7, ncol=2)
    curves = save(fig, out_dir, "batch-sweep-curves.png")
    s = sweep.settings
    text = (
        f"{study.model}, {study.num_train} training / {s['num_test']} test samples of MNIST-1D; batch sizes "
        f"{sweep.batch_sizes} (the largest is {100 * sweep.batch_sizes[-1] / study.num_train:.0f}% of the "
        f"training set), seeds {sweep.seeds}: every seed starts from the same weights and sees the data in "
        "the same order at every batch size. Each run is measured three ways: after "
        f"{s['epochs']} epochs (equal samples seen), after {s['updates']} updates (equal steps), and when its "
        f"full training loss first falls to {', '.join(f'{t:g}' for t in s['stop_at_loss'])} (matched training "
        "loss, checked every 25 updates). lambda_max is the top Hessian eigenvalue (Lanczos), eps-sharpness "
        "Keskar et al.'s box maximum (eps = 1e-3, full space, 10 L-BFGS-B iterations), both on the training set. "
        "Mean ± standard deviation over seeds."
    )
    verdicts = table(
        ["comparison", "batch", "lambda_max", "eps-sharpness", "test accuracy", "verdict"],
        [
            (
                c.label,
                f"{c.small_batch} vs {c.large_batch}",
                *(
                    "-"
                    if c.holds[m] is None
                    else ("as claimed" if c.holds[m] else "opposite")
                    + ("" if c.clear[m] else " (within spread)")
                    for m in ("lambda_max", "epsilon_sharpness", "test_accuracy")
                ),
                c.verdict,
            )
            for c in study.comparisons
        ],
    )
    plain = " ".join(
        f"At {c.label}: {c.verdict} Keskar's claim. {c.text}" for c in study.comparisons
    )
    supported = [c.label for c in study.comparisons if c.verdict == "supports"]
    summary = (
        "Keskar et al. (F1 on MNIST): small batch 99.66% train / 98.03% test, large batch 99.92% / 97.81%, "
        "eps-sharpness 1.23 vs 205.14. Here the claim (small batches: flatter by both measures and better "
        "on the test set, by more than the spread over seeds) is supported "
        + (f"at {', '.join(supported)}" if supported else "by none of the three comparisons")
        + ". Equal epochs give the small batch many more updates (so a lower loss, and cross-entropy's "
        "Hessian shrinks with the loss); equal updates favour the large batch the same way; only matched "
        "training loss compares minima of the same depth."
    )
    tables = ""
    for label in sweep.labels:
        rows = [
            (
                r["batch_size"],
                f"{r['reached']}/{r['runs']}",
                "-" if r["step"] is None else f"{r['step']:.0f}",
                "-" if r["epoch"] is None else f"{r['epoch']:.1f}",
                _cell(r, "train_loss"),
                _cell(r, "train_accuracy", True),
                _cell(r, "test_accuracy", True),
                _cell(r, "lambda_max"),
                _cell(r, "epsilon_sharpness"),
            )
            for r in sweep.table(label)
        ]
        tables += paragraph(f"At {label}:") + table(
            [
                "batch",
                "reached",
                "updates",
                "epochs",
                "train loss",
                "train acc.",
                "test acc.",
                "lambda_max",
                "eps-sharpness",
            ],
            rows,
        )
    body = (
        paragraph(text)
        + verdicts
        + paragraph(summary, cls="verdict")
        + paragraph(plain)
        + figure(
            name,
            "Train and test accuracy, lambda_max and eps-sharpness against batch size at the three "
            "milestones (mean ± std over seeds).",
        )
        + tables
        + figure(
            curves, "Full-data training (solid) and test (dashed) loss of every run against epochs."
        )
    )
    return Section("batch-sweep", "Batch size II: training, testing and sharpness (sweep)", body)
