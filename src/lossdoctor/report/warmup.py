"""Report section for the warm-up study.

Training curves with and without warm-up over seeds, and the learning-rate schedules."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._results import fmt
from ..studies.warmup import WarmupStudy
from .figures import new_figure, save
from .html import Section, figure, paragraph, table


def _figure(study: WarmupStudy, out_dir: Path) -> str:
    fig, (ax_loss, ax_early, ax_lr) = new_figure(3, width=4.6, height=3.7)
    early = max(min(study.steps // 2, 2 * study.warmup_steps), 1)
    for w, color, label in (
        (0, "C3", "no warm-up"),
        (study.warmup_steps, "C0", f"warm-up {study.warmup_steps} steps"),
    ):
        for i, r in enumerate(study.of(w)):
            loss = np.array(r.history.step_loss, dtype=float)
            steps = np.arange(len(loss))
            kwargs = {"label": label} if i == 0 else {}
            ax_loss.plot(steps, loss, color=color, lw=0.8, alpha=0.8, **kwargs)
            ax_early.plot(steps[:early], loss[:early], color=color, lw=1.0, alpha=0.8, **kwargs)
    for ax, title in (
        (ax_loss, "training loss per step (all seeds)"),
        (ax_early, f"the first {early} steps"),
    ):
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("batch loss")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    ax_lr.plot(study.schedule_without, color="C3", label="no warm-up")
    ax_lr.plot(study.schedule_with, color="C0", label=f"linear warm-up, {study.warmup_steps} steps")
    ax_lr.set_xlabel("step")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_title("lr schedule (lossdoctor.warmup)", fontsize=10)
    ax_lr.legend(fontsize=8)
    return save(fig, out_dir, "warmup.png")


def render(study: WarmupStudy, out_dir: Path) -> Section:
    """The report section for the warm-up study: its figures (PNGs written to ``out_dir``), tables and text."""
    name = _figure(study, out_dir)
    rows = []
    for seed in study.seeds:
        a = next(r for r in study.of(0) if r.seed == seed)
        b = next(r for r in study.of(study.warmup_steps) if r.seed == seed)
        rows.append(
            (
                seed,
                a.spikes,
                b.spikes,
                f"{a.max_early_loss:.3f}",
                f"{b.max_early_loss:.3f}",
                f"{a.final_train_loss:.4f}",
                f"{b.final_train_loss:.4f}",
                "-" if a.final_test_accuracy is None else f"{a.final_test_accuracy:.1%}",
                "-" if b.final_test_accuracy is None else f"{b.final_test_accuracy:.1%}",
            )
        )
    without, with_ = study.of(0), study.of(study.warmup_steps)
    text = (
        f"Adam at lr {fmt(study.lr)} with batch {study.batch_size} on MNIST-1D ({study.model}, "
        f"{study.epochs} epochs = {study.steps} steps), seeds {study.seeds}, from the same initial "
        f"weights with and without a linear warm-up over the first {study.warmup_steps} steps "
        f"(lossdoctor.warmup, a torch LRScheduler). A spike is a step whose loss exceeds "
        f"{study.spike_factor}x the lowest loss seen so far. Without warm-up: "
        f"{sum(r.spikes for r in without)} spikes in total, mean final training loss "
        f"{np.mean([r.final_train_loss for r in without]):.4f}; with warm-up: "
        f"{sum(r.spikes for r in with_)} spikes, mean final training loss "
        f"{np.mean([r.final_train_loss for r in with_]):.4f}."
    )
    body = (
        paragraph(text)
        + table(
            [
                "seed",
                "spikes (none)",
                "spikes (warm-up)",
                "max early loss (none)",
                "max early loss (warm-up)",
                "final train loss (none)",
                "final train loss (warm-up)",
                "test acc. (none)",
                "test acc. (warm-up)",
            ],
            rows,
        )
        + figure(
            name,
            "Left: per-step training loss of every seed (red: no warm-up, blue: warm-up). "
            "Middle: the first steps, where Adam's first updates at the full lr throw the loss up. "
            "Right: the two learning-rate schedules.",
        )
    )
    return Section("warmup", "Learning-rate warm-up on MNIST-1D", body)
