"""Report section for the lecture's toy saddle: the error surface, the escape, the comparison."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._results import fmt
from ..analysis.saddle import SaddleEscapeComparison
from ..studies.critical_toy import CriticalToyStudy
from .figures import new_figure, save
from .html import Section, figure, paragraph, table


def _surface_figure(study: CriticalToyStudy, out_dir: Path) -> str:
    fig, (ax,) = new_figure(1, width=6.2, height=5.6)
    grid = study.grid
    levels = np.concatenate([np.linspace(0, 1, 11)[1:], [1.5, 2, 3, 5, 8, 12]])
    contours = ax.contourf(
        grid,
        grid,
        study.surface,
        levels=np.concatenate([[0], levels]),
        cmap="viridis",
        extend="max",
    )
    fig.colorbar(contours, ax=ax, label="loss (1 - w1·w2)²")
    ax.contour(grid, grid, study.surface, levels=[1.0], colors="w", linewidths=0.8, linestyles="--")
    u = study.escape.direction.cpu().numpy() if study.escape.direction is not None else np.zeros(2)
    for sign in (1, -1):
        ax.annotate(
            "",
            xy=(sign * u[0], sign * u[1]),
            xytext=(0, 0),
            arrowprops={"arrowstyle": "->", "color": "C3", "lw": 2},
        )
    ax.text(
        0.55 * u[0] + 0.08,
        0.55 * u[1] - 0.25,
        f"±u (λ = {fmt(study.critical.min_eigenvalue)})",
        color="C3",
    )
    eigen = next(m for m in study.comparison.methods if m.name.startswith("eigenvector"))
    path = np.array(eigen.path)
    ax.plot(path[:, 0], path[:, 1], "o-", color="C3", ms=3, label="eigenvector step, then GD")
    hair = np.array(study.hair_path.path)
    ax.plot(
        hair[:, 0],
        hair[:, 1],
        "x--",
        color="orange",
        ms=5,
        label=f"plain GD from ({study.hair_start[0]:g}, {study.hair_start[1]:g})",
    )
    perturbed = next(m for m in study.comparison.methods if m.name == "perturbed GD")
    p = np.array(perturbed.path)
    ax.plot(p[:, 0], p[:, 1], ".:", color="cyan", ms=3, label="perturbed GD from the saddle")
    ax.plot([0], [0], marker="X", color="w", mec="k", ms=12, ls="none", label="saddle (0, 0)")
    ax.set_xlim(grid[0], grid[-1])
    ax.set_ylim(grid[0], grid[-1])
    ax.set_aspect("equal")
    ax.set_xlabel("w1")
    ax.set_ylabel("w2")
    ax.set_title("L(w1, w2) = (1 - w1·w2)²: the saddle and the way down")
    ax.legend(loc="lower left", fontsize=8, framealpha=0.9)
    return save(fig, out_dir, "critical-toy-surface.png")


def _draw_methods(ax, comparison: SaddleEscapeComparison) -> None:
    for m in comparison.methods:
        ax.plot(
            range(len(m.losses)),
            m.losses,
            label=m.name,
            lw=2 if m.name.startswith("eigen") else 1.3,
        )
    ax.axhline(
        comparison.loss_start - comparison.escape_drop,
        color="k",
        lw=0.7,
        ls=":",
        label=f"escaped (loss drop ≥ {fmt(comparison.escape_drop)})",
    )
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(
        f"Escape from the saddle (lr {fmt(comparison.lr)}, kick radius {fmt(comparison.kick_radius)})"
    )
    ax.legend(fontsize=8)


def _escape_figure(study: CriticalToyStudy, out_dir: Path) -> str:
    fig, (ax_ls, ax_m) = new_figure(2)
    esc = study.escape
    t, loss = esc.line_search_steps, esc.line_search_losses
    keep = np.abs(t) <= 3 * max(esc.step, 1e-12)
    ax_ls.plot(t[keep], loss[keep], ".", color="C0", label="actual loss L(θ' + t·u) (line search)")
    dense_t = np.linspace(-3 * esc.step, 3 * esc.step, 301)
    ax_ls.plot(
        dense_t,
        esc.loss_before + 0.5 * esc.eigenvalue * dense_t**2,
        color="C3",
        label="second order: L(θ') + ½λt²",
    )
    ax_ls.axvline(
        esc.sign * esc.step,
        color="k",
        lw=0.7,
        ls=":",
        label=f"chosen step {esc.sign:+d}×{fmt(esc.step)}",
    )
    ax_ls.set_ylim(min(-1.0, float(loss[keep].min()) - 0.2), esc.loss_before + 1.0)
    ax_ls.set_xlabel("t (step along the eigenvector u)")
    ax_ls.set_ylabel("loss")
    ax_ls.set_title("Line search along u: prediction vs. actual")
    ax_ls.legend(fontsize=8)
    _draw_methods(ax_m, study.comparison)
    return save(fig, out_dir, "critical-toy-escape.png")


def comparison_rows(comparison: SaddleEscapeComparison) -> list[tuple]:
    """The escape comparison as table rows: method, final loss, escaped at, and the cost of each."""
    return [
        (
            m.name,
            fmt(m.final_loss, 6),
            "never" if m.escaped_at is None else m.escaped_at,
            m.gradients,
            m.matvecs,
            m.loss_evaluations,
            m.kicks,
        )
        for m in comparison.methods
    ]


COMPARISON_HEADER = [
    "method",
    "final loss",
    "escaped at step",
    "gradients",
    "Hessian-vector products",
    "loss evaluations",
    "random kicks",
]


def render(study: CriticalToyStudy, out_dir: Path) -> Section:
    """The report section for the lecture's toy saddle: its figures (PNGs written to ``out_dir``), tables and text."""
    c, esc, cmp_ = study.critical, study.escape, study.comparison
    surface = _surface_figure(study, out_dir)
    escape = _escape_figure(study, out_dir)
    u = esc.direction.cpu().numpy() if esc.direction is not None else np.zeros(2)
    verdict = (
        f"Verdict at (w1, w2) = (0, 0): {c.kind.replace('_', ' ')}. Gradient norm {fmt(c.grad_norm)}; "
        f"Hessian eigenvalues {fmt(c.max_eigenvalue)} and {fmt(c.min_eigenvalue)} (exact, dense); "
        f"minimum ratio {c.minimum_ratio:.2f}; escape direction u = ({u[0]:.4f}, {u[1]:.4f})."
    )
    text = (
        f"The lecture's network y = w1·w2·x with one sample x = 1, target 1 and squared error. "
        f"Stepping {esc.sign:+d}×{fmt(esc.step)} along u (line search, {esc.loss_evaluations} loss evaluations) "
        f"takes the loss from {fmt(esc.loss_before, 6)} to {fmt(esc.loss_after, 6)} (change "
        f"{fmt(esc.actual_change)}); the second-order prediction ½λη² is {fmt(esc.predicted_change)}: it is "
        "exact for small steps and overshoots for large ones, because the surface bends back up "
        f"(L = (1 - η²/2)² along u). Plain gradient descent started exactly at the saddle never moves (the "
        f"gradient is 0); from a hair away, at {study.hair_start}, it slides off after a while, first along "
        "the ridge towards the escape direction. Cheaper than an eigenvector: a random kick when the gradient "
        "is small (perturbed GD), with or without momentum."
    )
    body = (
        paragraph(verdict, "verdict")
        + paragraph(text)
        + table(
            ["", "value"],
            [
                ("gradient norm", fmt(c.grad_norm)),
                ("largest eigenvalue", fmt(c.max_eigenvalue, 6)),
                ("smallest eigenvalue", fmt(c.min_eigenvalue, 6)),
                ("zero tolerance", fmt(c.eig_tol)),
                (
                    "loss before / after the escape step",
                    f"{fmt(esc.loss_before, 6)} / {fmt(esc.loss_after, 6)}",
                ),
                (
                    "predicted change ½λη² / actual",
                    f"{fmt(esc.predicted_change)} / {fmt(esc.actual_change)}",
                ),
            ],
        )
        + figure(
            surface,
            "The error surface with the saddle at the origin, the negative-curvature eigenvector "
            "±u, the eigenvector step followed by gradient descent, plain gradient descent from "
            "a hair away, and perturbed gradient descent. Dashed: the L = 1 level through the "
            "saddle.",
        )
        + figure(
            escape,
            "Left: the loss along the eigenvector (dots) against the second-order model. Right: "
            f"loss per step for every method, {cmp_.steps} steps each, seed {cmp_.seed}.",
        )
        + table(COMPARISON_HEADER, comparison_rows(cmp_))
    )
    return Section("critical-toy", "Critical points I: the lecture's saddle, and the way out", body)
