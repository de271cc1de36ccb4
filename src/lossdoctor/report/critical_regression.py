"""Report section for the homework regression: exact-Hessian verdict beside the Gauss-Newton ratio."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._results import fmt
from ..studies.critical_regression import RegressionStudy
from .figures import new_figure, save
from .html import Section, figure, paragraph, table


def shown_run(study: RegressionStudy):
    """The first run whose gradient got below the target (the one whose fit is drawn)."""
    return next((r for r in study.runs if r.critical.grad_norm < study.grad_target), study.runs[0])


def _figure(study: RegressionStudy, out_dir: Path) -> str:
    fig, (ax_fit, ax_hist, ax_eig) = new_figure(3, width=4.6)
    first = shown_run(study)
    ax_fit.plot(
        study.curve_x, np.sinc(5 * study.curve_x), color="0.6", lw=1, label="sin(5πx)/(5πx)"
    )
    ax_fit.plot(study.curve_x, study.fit, color="C0", label=f"network (seed {first.seed})")
    ax_fit.plot(study.inputs, study.targets, "k.", label=f"{study.num_points} training points")
    ax_fit.set_xlabel("x")
    ax_fit.set_title("The fit")
    ax_fit.legend(fontsize=8)
    for i, r in enumerate(study.runs):
        norms = r.loss_phase.grad_norms + r.grad_phase.grad_norms[1:]
        ax_hist.semilogy(norms, color=f"C{i}", lw=1, label=f"seed {r.seed}")
        ax_hist.axvline(r.loss_phase.iterations, color=f"C{i}", lw=0.6, ls=":")
    ax_hist.axhline(
        study.grad_target, color="k", lw=0.8, ls="--", label=f"target {fmt(study.grad_target)}"
    )
    ax_hist.set_xlabel(
        "iteration (L-BFGS on the loss; Levenberg-Marquardt on g after the dotted line)"
    )
    ax_hist.set_ylabel("gradient norm")
    ax_hist.set_title("Driving the gradient to zero")
    ax_hist.legend(fontsize=8)
    tol = first.critical.eig_tol
    exact = np.sort(first.exact_eigenvalues)
    gn = np.sort(first.gauss_newton_eigenvalues)
    ax_eig.plot(gn, "o", ms=5, mfc="none", color="C0", label="Gauss-Newton (2/N) JᵀJ")
    ax_eig.plot(exact, ".", ms=3, color="C3", label="exact Hessian")
    ax_eig.axhspan(-tol, tol, color="0.85", label=f"zero tolerance ±{fmt(tol)}")
    ax_eig.set_yscale("symlog", linthresh=max(tol / 10, 1e-12))
    ax_eig.set_xlabel("eigenvalue index (ascending)")
    ax_eig.set_ylabel("eigenvalue (symlog)")
    ax_eig.set_title(f"All {len(exact)} eigenvalues (seed {first.seed})")
    ax_eig.legend(fontsize=8)
    return save(fig, out_dir, "critical-regression.png")


def render(study: RegressionStudy, out_dir: Path) -> Section:
    """The report section for the homework regression: its figures (PNGs written to ``out_dir``), tables and text."""
    name = _figure(study, out_dir)
    rows = []
    for r in study.runs:
        c = r.critical
        rows.append(
            (
                r.seed,
                fmt(c.loss, 5),
                fmt(c.grad_norm),
                c.kind.replace("_", " "),
                fmt(c.min_eigenvalue, 5),
                fmt(c.max_eigenvalue, 5),
                f"{c.num_positive}/{c.num_negative}/{c.num_zero}",
                f"{r.exact_ratio:.3f}",
                f"{r.gauss_newton_ratio:.3f}",
                f"{r.exact_ratio_naive:.3f}",
                f"{r.gauss_newton_ratio_naive:.3f}",
                r.dead_units,
            )
        )
    first = shown_run(study).critical
    verdicts = ", ".join(
        f"seed {r.seed}: {r.critical.kind.replace('_', ' ')}"
        + (
            ""
            if r.critical.grad_norm < study.grad_target
            else f" (gradient stalled at {fmt(r.critical.grad_norm)}, above the target)"
        )
        for r in study.runs
    )
    text = (
        f"A 1→{study.hidden}→1 ReLU network ({first.num_params} parameters, float64) fits "
        f"sin(5πx)/(5πx) from {study.num_points} points on [-1, 1]: full-batch L-BFGS on the squared error, "
        f"then Levenberg-Marquardt on the gradient (minimising the gradient norm, the homework's trick, "
        f"which stops at any critical point) "
        f"until the gradient norm is below {fmt(study.grad_target)}. The end point is classified with the "
        f"exact Hessian ({first.num_params}×{first.num_params}, dense). Eigenvalues within the zero tolerance "
        f"(1e-4 of the spectrum's spread) are counted as zero: the network has many exactly flat directions "
        f"(hidden units dead on every point, and the ReLU rescaling symmetry)."
    )
    warning = (
        "The Gauss-Newton matrix that some tutorials diagonalise here is positive semidefinite by "
        "construction (2/N)·JᵀJ: it cannot have a negative eigenvalue, so its 'minimum ratio' cannot "
        "reveal a saddle, and it has at most as many non-zero eigenvalues as training points. Counted "
        "the naive way (λ > 0, no tolerance), both ratios are decided by the signs of rounding noise "
        "on the zero eigenvalues."
    )
    body = (
        paragraph(f"Verdicts: {verdicts}.", "verdict")
        + paragraph(text)
        + paragraph(warning, "warn")
        + table(
            [
                "seed",
                "loss",
                "|g|",
                "verdict",
                "λ min",
                "λ max",
                "+/−/0",
                "minimum ratio (exact)",
                "ratio (Gauss-Newton)",
                "exact, naive λ>0",
                "Gauss-Newton, naive λ>0",
                "dead units",
            ],
            rows,
        )
        + figure(
            name,
            "Left: the data and the fit. Middle: the gradient norm over the L-BFGS iterations. "
            "Right: every eigenvalue of the exact Hessian and of the Gauss-Newton matrix at the "
            "end point (symlog scale; grey band: counted as zero).",
        )
    )
    return Section(
        "critical-regression",
        "Critical points II: the homework regression, exact Hessian vs Gauss-Newton",
        body,
    )
