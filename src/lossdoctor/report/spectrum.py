"""Report section for the Hessian-spectrum study."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._results import fmt
from ..curvature import SpectralDensity
from ..studies.spectrum import SpectrumStudy
from .figures import new_figure, save, save_new
from .html import Section, figure, paragraph, table


def _draw_density(ax, dens: SpectralDensity) -> None:
    ax.semilogy(dens.grid, np.maximum(dens.density, 1e-12), color="C0")
    ax.set_ylim(bottom=max(1e-8, float(np.max(dens.density)) * 1e-7))
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density (log scale)")
    ax.set_title(f"Spectral density (SLQ, {dens.num_probes} probes x {dens.lanczos_steps} steps)")
    ax.axvline(0, color="k", lw=0.6)


def density_figure(dens: SpectralDensity, path: Path) -> Path:
    """The density plot alone, saved to ``path``."""
    fig, (ax,) = new_figure(1)
    _draw_density(ax, dens)
    return save_new(fig, path)


def render(study: SpectrumStudy, out_dir: Path) -> Section:
    """The report section for the Hessian-spectrum study: its figures (PNGs written to ``out_dir``), tables and text."""
    eig, dens = study.eigen, study.density
    fig, (ax_d, ax_e) = new_figure(2)
    _draw_density(ax_d, dens)
    order = np.arange(len(eig.eigenvalues))
    colors = ["C3" if v < 0 else "C2" for v in eig.eigenvalues]
    ax_e.bar(order, eig.eigenvalues, color=colors)
    ax_e.set_xticks(order)
    ax_e.set_xlabel("index (largest ... smallest)")
    ax_e.set_ylabel("eigenvalue")
    ax_e.set_title("Extreme eigenvalues (Lanczos)")
    name = save(fig, out_dir, "spectrum.png")
    rows = [
        (i, f"{v:.6g}", f"{r:.1e}", f"{b:.1e}", "yes" if c else "NO")
        for i, (v, r, b, c) in enumerate(
            zip(eig.eigenvalues, eig.residual_norms, eig.error_bounds, eig.converged)
        )
    ]
    acc = study.training.epoch_train_accuracy[-1] if study.training.epoch_train_accuracy else None
    text = (
        f"{study.problem}: {study.num_params} parameters, trained {study.training.epochs} epochs with Adam "
        f"to training loss {fmt(study.train_loss)}"
        + (f" (accuracy {acc:.1%})" if acc is not None else "")
        + f". Exact Hessian of the mean loss over all {study.num_samples} training samples, "
        f"{study.mode} mode. Top/bottom eigenvalues from {eig.matvecs} Hessian-vector products; "
        f"trace {fmt(study.trace.estimate)} +/- {fmt(study.trace.standard_error)} (Hutch++, "
        f"{study.trace.matvecs} products); estimated fraction of negative eigenvalues "
        f"{dens.negative_fraction:.3f} +/- {dens.negative_fraction_error:.3f}. "
        "Each eigenvalue is a Rayleigh quotient of its vector, so a negative value proves that "
        "the loss curves downward in that direction even where the pair has not converged "
        "(the bottom of a trained network's spectrum is a near-degenerate cluster that Lanczos "
        "resolves slowly; the error bound says how far the value can be from an eigenvalue)."
    )
    body = (
        paragraph(text)
        + table(["#", "eigenvalue", "residual", "error bound", "converged"], rows)
        + figure(
            name,
            "Left: the Hessian's eigenvalue density (log scale): a bulk near zero and a few "
            "large outliers. Right: the extreme eigenvalues at both ends of the spectrum; "
            "negative ones (red) are directions in which the loss still curves down.",
        )
    )
    return Section("spectrum", "Hessian spectrum of a trained MNIST-1D MLP", body)
