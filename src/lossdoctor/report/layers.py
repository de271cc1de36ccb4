"""Report section: the per-layer curvature of an MLP and of a small transformer, side by side."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._results import fmt
from ..analysis.layers import LayerCurvature
from ..studies.layers import LayersStudy
from .figures import new_figure, save
from .html import Section, figure, paragraph, table


def _bars(ax, t: LayerCurvature, title: str) -> None:
    names = [r.name for r in t.rows]
    lam = np.array([max(r.lambda_max, 1e-12) for r in t.rows])
    ax.bar(range(len(names)), lam, color="C0")
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)), names, rotation=70, ha="right", fontsize=7)
    ax.set_ylabel("block λ_max")
    ax.set_title(
        f"{title}: heterogeneity {t.heterogeneity:.3f}, λ_max spread {fmt(t.spread, 3)}x",
        fontsize=9,
    )


def _js(ax, t: LayerCurvature, title: str) -> None:
    im = ax.imshow(t.js_matrix, vmin=0, vmax=1, cmap="viridis")
    names = [r.name for r in t.rows]
    ax.set_xticks(range(len(names)), names, rotation=70, ha="right", fontsize=6)
    ax.set_yticks(range(len(names)), names, fontsize=6)
    ax.set_title(f"{title}: JS distance between blockwise spectra", fontsize=9)
    ax.grid(False)
    ax.figure.colorbar(im, ax=ax, fraction=0.046)


def _rows(t: LayerCurvature) -> list[tuple]:
    return [
        (
            r.name,
            r.module_type,
            r.numel,
            fmt(r.lambda_max),
            f"{fmt(r.trace)} ± {fmt(r.trace_se, 2)}",
            fmt(r.grad_norm),
            fmt(r.lr_sharpness),
            fmt(r.update_ratio),
        )
        for r in t.rows
    ]


def render(study: LayersStudy, out_dir: Path) -> Section:
    """The report section for the per-layer curvature study: its figures (PNGs written to ``out_dir``), tables and text."""
    fig, axes = new_figure(2, width=5.2, height=4.2)
    _bars(axes[0], study.mlp, "MLP")
    _bars(axes[1], study.transformer, "transformer")
    bars = save(fig, out_dir, "layers-lambda.png")
    fig, axes = new_figure(2, width=5.2, height=4.6)
    _js(axes[0], study.mlp, "MLP")
    _js(axes[1], study.transformer, "transformer")
    js = save(fig, out_dir, "layers-js.png")
    header = [
        "block",
        "type",
        "params",
        "λ_max",
        "trace ± s.e.",
        "|grad|",
        "S_b (AdamW)",
        "step/|θ|",
    ]
    text = (
        f"An MNIST-1D MLP and a 2-layer transformer with tied embeddings, each trained {study.steps} steps with "
        f"AdamW (final minibatch losses {fmt(study.mlp_loss)} and {fmt(study.transformer_loss)}), then measured "
        f"block by block: each module's own Hessian block by Lanczos from {study.mlp.probes} Rademacher probes of "
        f"{study.mlp.lanczos_steps} steps (λ_max is a Ritz value, a lower bound, with its residual in the JSON; "
        f"the trace is Hutchinson's unbiased estimate with its standard error). Block heterogeneity is the mean "
        f"Jensen-Shannon distance between the blocks' spectral densities (Zhang et al., 2024, \"Why Transformers "
        f'Need Adam"): one learning rate fits blocks with similar spectra; blocks as different as the '
        f"transformer's need per-parameter step sizes. `lossdoctor spectrum --per-layer` prints the same table "
        f"for any model."
    )
    verdict = (
        f"Heterogeneity: MLP {study.mlp.heterogeneity:.3f}, transformer {study.transformer.heterogeneity:.3f}; "
        f"block λ_max spans {fmt(study.mlp.spread, 3)}x in the MLP and {fmt(study.transformer.spread, 3)}x in "
        f"the transformer."
    )
    body = (
        paragraph(text)
        + paragraph(verdict, "verdict")
        + figure(bars, "Each block's largest Hessian eigenvalue (log scale).")
        + figure(
            js,
            "Jensen-Shannon distance between every pair of blocks' spectral densities (0: the same "
            "spectrum; 1: disjoint).",
        )
        + "<h3>MLP</h3>"
        + table(header, _rows(study.mlp), left=2)
        + "<h3>Transformer</h3>"
        + table(header, _rows(study.transformer), left=2)
    )
    return Section("layers", "Curvature layer by layer: why transformers need Adam", body)
