"""Report section for the doctor's validation on held-out seeds.

The confusion matrix (figure and table), the first prescription's fix on every stalled run (loss
after the horizon: unchanged, prescribed, known remedy), and every run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .._results import fmt
from ..studies.doctor_validation import ValidationRun, ValidationStudy
from .figures import new_figure, save
from .html import Section, figure, paragraph, table


def _used(study: ValidationStudy) -> list[int]:
    """Indices of the causes that appear as truth or verdict (the matrix without empty rows/columns)."""
    m = np.asarray(study.confusion)
    return [i for i in range(len(study.causes)) if m[i].any() or m[:, i].any()]


def _confusion_figure(study: ValidationStudy, out_dir: Path) -> str:
    keep = _used(study)
    m = np.asarray(study.confusion)[np.ix_(keep, keep)]
    labels = [study.causes[i].replace("_", " ") for i in keep]
    fig, (ax,) = new_figure(1, width=7.5, height=6.5)
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    for i in range(len(labels)):
        for j in range(len(labels)):
            if m[i, j]:
                ax.text(
                    j,
                    i,
                    str(m[i, j]),
                    ha="center",
                    va="center",
                    color="white" if m[i, j] > m.max() / 2 else "black",
                    fontsize=9,
                )
    ax.set_xlabel("the doctor's verdict")
    ax.set_ylabel("true cause (by construction)")
    ax.set_title(
        f"{len(study.runs)} runs, held-out seeds {list(study.seeds)}: {study.accuracy:.0%} right",
        fontsize=10,
    )
    ax.grid(False)
    return save(fig, out_dir, "doctor-confusion.png")


def _gap_closed(r: ValidationRun) -> float | None:
    """Where the first prescription landed on the line from unchanged (0) to the known remedy (1).

    Clipped to [-0.5, 1.5], -0.5 where it is not finite; None for a run whose fix was not judged
    (or whose ends are not finite)."""
    unchanged, remedy, prescribed = r.unchanged, r.remedy, r.prescribed
    if r.fixed is None or unchanged is None or remedy is None or prescribed is None:
        return None
    if not (math.isfinite(unchanged) and math.isfinite(remedy)):
        return None
    gap = unchanged - remedy
    value = (unchanged - prescribed) / gap if gap > 0 and math.isfinite(prescribed) else math.nan
    return float(np.clip(value, -0.5, 1.5)) if math.isfinite(value) else -0.5


def _fix_figure(study: ValidationStudy, out_dir: Path) -> str | None:
    judged = [(r, _gap_closed(r)) for r in study.runs]
    runs = [r for r, g in judged if g is not None]
    closed = [g for _, g in judged if g is not None]
    if not runs:
        return None
    fig, (ax,) = new_figure(1, width=9.0, height=4.2)
    order = np.argsort([r.family for r in runs], kind="stable")
    xs = np.arange(len(runs))
    colors = ["C2" if runs[i].fixed else "C3" for i in order]
    ax.bar(xs, [closed[i] for i in order], color=colors)
    ax.axhline(0.5, color="k", lw=0.8, ls="--")
    ax.axhline(1.0, color="grey", lw=0.6)
    ax.set_xticks(xs, [f"{runs[i].family} s{runs[i].seed}" for i in order], rotation=90, fontsize=6)
    ax.set_ylabel("share of the gap closed")
    ax.set_title(
        "First prescription, applied and trained on: 0 = unchanged, 1 = the known remedy "
        "(dashed: fixed)",
        fontsize=9,
    )
    return save(fig, out_dir, "doctor-fixes.png")


def render(study: ValidationStudy, out_dir: Path) -> Section:
    """The report section for the doctor's validation: its figures (PNGs written to ``out_dir``), tables and text."""
    name = _confusion_figure(study, out_dir)
    fixes = _fix_figure(study, out_dir)
    keep = _used(study)
    labels = [study.causes[i].replace("_", " ") for i in keep]
    matrix_rows = [
        (labels[a], *[study.confusion[i][j] for j in keep], sum(study.confusion[i]))
        for a, i in enumerate(keep)
    ]
    per_cause: dict[str, list[int]] = {}
    for r in study.runs:
        c = per_cause.setdefault(r.truth, [0, 0, 0, 0])
        c[0] += 1
        c[1] += r.correct
        if r.fixed is not None:
            c[2] += 1
            c[3] += r.fixed
    cause_rows = [
        (cause.replace("_", " "), n, f"{right}/{n}", f"{fixed}/{stalled}" if stalled else "-")
        for cause, (n, right, stalled, fixed) in sorted(per_cause.items())
    ]
    run_rows = [
        (
            r.family,
            r.architecture,
            r.seed,
            r.truth.replace("_", " "),
            r.predicted.replace("_", " "),
            "yes" if r.correct else "NO",
            r.top_text[:90] + ("" if r.top_applicable else " (code change)"),
            f"{r.trial_gain:+.1%}"
            if r.trial_gain is not None and math.isfinite(r.trial_gain)
            else "-",
            fmt(r.unchanged) if r.unchanged is not None else "-",
            fmt(r.prescribed) if r.prescribed is not None else "-",
            fmt(r.remedy) if r.remedy is not None else "-",
            {True: "fixed", False: "no", None: "-"}[r.fixed] + (" HARM" if r.harmful else ""),
            f"{r.seconds:.1f}",
        )
        for r in study.runs
    ]
    families = len({r.family for r in study.runs})
    text = (
        f"{len(study.runs)} real training runs whose cause is known by construction: {families} families "
        f"(a cause on one architecture: linear and logistic regression, MLPs, a CNN with BatchNorm, a 2-layer "
        f"transformer with AdamW, deep sigmoid/tanh nets, the lecture's toy) x held-out seeds "
        f"{list(study.seeds)}. The doctor gets what a user has: the model where it stalled, its loss, its "
        f"training batches, the last 240 losses and the optimizer; it measures, decides, and tries each "
        f"prescription for a short trial against continuing unchanged. Its rules and candidates were shaped on "
        f"seeds {list(study.tune_seeds)} only. Then, from the stalled state, training continues for the "
        f"family's horizon three times over the same batches: unchanged, with the first prescription applied "
        f"through its own apply(), and with the known remedy. A stall is fixed when the prescription closes at "
        f"least half of the gap between unchanged and the remedy, harmful when it ends worse than unchanged."
    )
    verdict = (
        f"Right cause: {sum(r.correct for r in study.runs)}/{len(study.runs)} ({study.accuracy:.1%}). "
        f"Healthy runs called stalled: {study.healthy_false_alarms}/{study.healthy_runs}; first prescription "
        f"'no change' on {study.healthy_no_change}/{study.healthy_runs}. Stalls fixed by the first "
        f"prescription: {study.fixed}/{study.stalled_runs} ({study.fix_rate:.1%}); harmful: {study.harmful}. "
        f"{study.seconds:.0f} s for the whole study."
    )
    good = study.accuracy >= 0.9 and study.fix_rate >= 0.8 and study.harmful == 0
    body = (
        paragraph(text)
        + paragraph(verdict, "verdict" if good else "warn")
        + table(["true \\ verdict", *labels, "runs"], matrix_rows)
        + figure(
            name,
            "Confusion matrix on the held-out seeds: rows are the true causes, columns the doctor's "
            "verdicts; the diagonal is what it got right.",
        )
        + table(["true cause", "runs", "cause right", "stalls fixed"], cause_rows)
        + (
            figure(
                fixes,
                "How much of the gap between continuing unchanged and the known remedy the first "
                "prescription closed, per stalled run (green: fixed, at least half; red: not).",
            )
            if fixes
            else ""
        )
        + table(
            [
                "family",
                "architecture",
                "seed",
                "true cause",
                "verdict",
                "correct",
                "first prescription",
                "trial gain",
                "unchanged",
                "prescribed",
                "remedy",
                "fix",
                "seconds",
            ],
            run_rows,
            left=7,
        )
    )
    return Section("doctor-validation", "The stall doctor on held-out runs: causes and fixes", body)
