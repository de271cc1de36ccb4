"""Report section for the doctor's validation: the confusion matrix (figure and table) and every
run with its verdict."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._results import fmt
from ..studies.doctor_validation import EARLIER_ROUNDS, ValidationStudy
from .figures import new_figure, save
from .html import Section, figure, paragraph, table


def _figure(study: ValidationStudy, out_dir: Path) -> str:
    fig, (ax,) = new_figure(1, width=6.0, height=5.0)
    m = np.asarray(study.confusion)
    ax.imshow(m, cmap="Blues")
    labels = [c.replace("_", " ") for c in study.causes]
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, str(m[i, j]), ha="center", va="center",
                    color="white" if m[i, j] > m.max() / 2 else "black", fontsize=11)
    ax.set_xlabel("the doctor's verdict")
    ax.set_ylabel("true cause (by construction)")
    ax.set_title(f"{len(study.runs)} runs, seeds {list(study.seeds)}: {study.accuracy:.0%} correct", fontsize=10)
    ax.grid(False)
    return save(fig, out_dir, "doctor-confusion.png")


def render(study: ValidationStudy, out_dir: Path) -> Section:
    name = _figure(study, out_dir)
    labels = [c.replace("_", " ") for c in study.causes]
    matrix_rows = [(label, *row, sum(row)) for label, row in zip(labels, study.confusion)]
    run_rows = [(r.scenario, r.architecture, r.seed, r.truth.replace("_", " "), r.predicted.replace("_", " "),
                 "yes" if r.correct else "NO", fmt(r.lr) if r.lr else "-",
                 fmt(r.lr_sharpness) if r.lr_sharpness is not None else "-", f"{r.relative_drop:+.2%}",
                 fmt(r.efficiency) if r.efficiency is not None else "-",
                 f"{r.grad_cosine:+.2f}" if r.grad_cosine is not None else "-", f"{r.seconds:.1f}")
                for r in study.runs]
    tune = (f" On the tuning seeds the same runs score {study.tune_accuracy:.0%}."
            if study.tune_accuracy is not None else "")
    text = (f"{len(study.runs)} real training runs whose cause is known by construction ({len(study.runs) // len(study.seeds)} "
            f"scenario/architecture pairs x seeds {list(study.seeds)}): gradient descent with lr near or above "
            f"2/λ_max, runs started at a saddle, sigmoid/softmax outputs trained with MSE from a saturated start, "
            f"converged runs, runs still progressing, and diverging runs, on MNIST-1D subsets and toys. The "
            f"doctor sees each run's last 60 losses, its optimizer, the model and the training data. Its "
            f"thresholds were tuned on seeds {list(study.tune_seeds)} only; these seeds were not used for "
            f"tuning.{tune} Earlier validation rounds, each followed by a change and then retired into the "
            f"tuning set: {EARLIER_ROUNDS}.")
    verdict = (f"{study.accuracy:.1%} of verdicts correct; stalled runs called \"progressing\": "
               f"{study.stalled_called_progressing}.")
    body = (paragraph(text) + paragraph(verdict, "verdict" if study.accuracy >= 0.9 else "warn")
            + table(["true \\ verdict", *labels, "runs"], matrix_rows)
            + figure(name, "Confusion matrix: rows are the true causes, columns the doctor's verdicts; the "
                     "diagonal is what it got right.")
            + table(["scenario", "architecture", "seed", "true cause", "verdict", "correct", "lr", "S = lr·λ_max",
                     "loss drop (window)", "efficiency", "grad cosine", "seconds"], run_rows, left=5))
    return Section("doctor-validation", "Validating the stall doctor on runs it was not tuned on", body)
