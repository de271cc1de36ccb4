"""Report section for "local minima are rare": training loss against minimum ratio."""

from __future__ import annotations

from pathlib import Path

from .._results import fmt
from ..studies.rare_minima import RareMinimaStudy
from .figures import new_figure, save
from .html import Section, figure, paragraph, table

STYLE = {
    "local_minimum": ("C2", "o"),
    "saddle_point": ("C3", "^"),
    "degenerate": ("C1", "s"),
    "local_maximum": ("C4", "v"),
    "not_critical": ("0.5", "x"),
}


def _by_kind(study: RareMinimaStudy):
    """Each verdict's runs, with its color and marker (verdicts no run got are left out)."""
    for kind, (color, marker) in STYLE.items():
        runs = [r for r in study.runs if r.critical.kind == kind]
        if runs:
            yield kind, runs, dict(c=color, marker=marker)


def _figure(study: RareMinimaStudy, out_dir: Path) -> str:
    fig, (ax, ax_neg) = new_figure(2)
    for kind, runs, style in _by_kind(study):
        ax.scatter(
            [r.critical.minimum_ratio for r in runs],
            [r.critical.loss for r in runs],
            label=f"{kind.replace('_', ' ')} ({len(runs)})",
            **style,
        )
    ax.set_xlabel("minimum ratio (fraction of positive eigenvalues, exact)")
    ax.set_ylabel("training loss")
    ax.set_title(f"{len(study.runs)} networks at near-zero gradient")
    ax.legend(fontsize=8)
    for kind, runs, style in _by_kind(study):
        ax_neg.scatter(
            [r.critical.num_negative for r in runs],
            [r.critical.num_zero for r in runs],
            label=kind.replace("_", " "),
            **style,
        )
    ax_neg.set_xlabel("number of negative eigenvalues")
    ax_neg.set_ylabel("number of zero eigenvalues (flat directions)")
    ax_neg.set_title(f"Of {study.num_params} eigenvalues per network")
    return save(fig, out_dir, "rare-minima.png")


def render(study: RareMinimaStudy, out_dir: Path) -> Section:
    """The report section for "local minima are rare": its figures (PNGs written to ``out_dir``), tables and text."""
    name = _figure(study, out_dir)
    n = len(study.runs)
    minima = study.count("local_minimum")
    no_negative = sum(r.critical.is_critical and r.critical.num_negative == 0 for r in study.runs)
    critical = len(study.critical_runs)
    verdict = (
        f"{n} runs (seeds {study.seeds[0]}-{study.seeds[-1]}): {critical} reached a critical point; "
        f"{minima} of them a true local minimum (every eigenvalue positive), "
        f"{study.count('saddle_point')} a saddle point, {study.count('degenerate')} a degenerate point "
        f"({no_negative} critical points with no negative eigenvalue at all), "
        f"{study.count('not_critical')} did not get the gradient small enough."
    )
    text = (
        f"Each run is an MLP 40→{study.hidden}→10 ({study.num_params} parameters, float64) on "
        f"{study.num_train} MNIST-1D training samples (data seed {study.data_seed}), initialised with its "
        "own seed, trained for a different number of L-BFGS iterations on the cross-entropy, then driven "
        f"towards a zero gradient (target {fmt(study.grad_target)}) by L-BFGS on the squared gradient norm, "
        "and classified with the exact, dense Hessian. The minimum ratio is exact: the fraction of all "
        "eigenvalues above the zero tolerance (1e-4 of the spectrum's spread)."
    )
    rows = [
        (
            r.seed,
            r.loss_iterations,
            fmt(r.critical.loss, 5),
            fmt(r.critical.grad_norm),
            f"{r.critical.minimum_ratio:.3f}",
            r.critical.num_positive,
            r.critical.num_negative,
            r.critical.num_zero,
            fmt(r.critical.min_eigenvalue, 4),
            r.critical.kind.replace("_", " "),
        )
        for r in study.runs
    ]
    body = (
        paragraph(verdict, "verdict")
        + paragraph(text)
        + figure(
            name,
            "Left: the lecture's plot, training loss against minimum ratio at each end point. "
            "Right: how many eigenvalues are negative and how many are zero at each end point.",
        )
        + table(
            [
                "seed",
                "loss iterations",
                "loss",
                "|g|",
                "minimum ratio",
                "positive",
                "negative",
                "zero",
                "λ min",
                "verdict",
            ],
            rows,
        )
    )
    return Section("rare-minima", "Critical points III: local minima are rare", body)
