"""The checkup page: one report on the user's model, in the order a person reads it (the verdict and tested prescriptions first; then the history, curvature, critical point and landscape behind them).

Offline (no CDN), readable on a phone, printable."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .._checks import check_float, check_optimizer
from .._files import atomic_write_text
from .._results import fmt
from ..analysis.layers import LayerCurvature
from ..checkup import BUDGET, Checkup, CheckupSection, checkup
from ..curvature.density import SpectralDensity
from ..training.lr_finder import LRRangeResult
from .figures import new_figure, save
from .html import Section, esc, figure, paragraph, table, write_page
from .notebook import CSS, inline_png, prescriptions_table, trial_figure


def _cost(c: Checkup, *keys: str) -> str:
    parts = [s for s in c.sections if s.key in keys]
    return " ".join(f"[{s.title}: {s.status}, {s.seconds:.1f} s, {s.hvps} products]" for s in parts)


def _history_figure(c: Checkup):
    fig, (ax,) = new_figure(1, width=7.0, height=3.2)
    h = np.asarray(c.history, dtype=float)
    ax.plot(np.arange(1, len(h) + 1), h, lw=0.8, color="C0")
    m = c.diagnosis.measurements
    if m is not None:
        w = m.trend.window
        ax.axvspan(
            max(len(h) - w, 0) + 1, len(h), color="C1", alpha=0.15, label=f"window read ({w} steps)"
        )
        third = max(1, w // 3)
        ax.hlines(
            [m.trend.start],
            max(len(h) - w, 0) + 1,
            max(len(h) - w, 0) + third,
            color="C3",
            lw=2,
            label="median of the first / last third",
        )
        ax.hlines([m.trend.end], len(h) - third + 1, len(h), color="C3", lw=2)
        ax.legend(fontsize=7)
    finite = h[np.isfinite(h)]
    if finite.size and finite.min() > 0 and finite.max() / finite.min() > 30:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    return fig


def _layers_figure(t: LayerCurvature):
    fig, (ax,) = new_figure(1, width=7.5, height=3.4)
    sharpness = [r.lr_sharpness for r in t.rows if r.lr_sharpness is not None]
    # S_b against the stability limit where every block has one, else each block's λ_max.
    limit = t.threshold if len(sharpness) == len(t.rows) else None
    if limit is None:
        values = [max(r.lambda_max, 1e-12) for r in t.rows]
        colors = ["C0"] * len(values)
    else:
        values = [max(s, 1e-12) for s in sharpness]
        colors = ["C3" if s > limit else "C0" for s in sharpness]
    ax.bar(range(len(values)), values, color=colors)
    if limit is not None:
        ax.axhline(limit, color="C3", ls="--", lw=1, label=f"stability limit {fmt(limit, 3)}")
        ax.legend(fontsize=7)
    ax.set_yscale("log")
    ax.set_xticks(range(len(values)), [r.name for r in t.rows], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("S_b (lr-scaled block sharpness)" if limit is not None else "block λ_max")
    ax.set_title(f"heterogeneity {t.heterogeneity:.3f}; red: above the stability limit", fontsize=9)
    return fig


def _density_figure(d: SpectralDensity):
    fig, (ax,) = new_figure(1, width=6.0, height=3.2)
    ax.semilogy(d.grid, np.maximum(d.density, 1e-12), color="C0")
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density (log)")
    ax.set_title(f"{d.num_probes} probes x {d.lanczos_steps} Lanczos steps", fontsize=9)
    return fig


def _profiles_figure(c: Checkup):
    curves = [
        (c.landscape_top, "along the top eigenvector"),
        (c.landscape_random, "random filter-normalized"),
        (c.escape_profile, "along the escape direction"),
    ]
    drawn = [(land, label) for land, label in curves if land is not None]
    fig, axes = new_figure(len(drawn), width=4.0, height=3.2)
    for ax, (land, label) in zip(axes, drawn):
        ax.plot(land.coords, land.train_loss, color="C0")
        ax.axvline(0, color="grey", lw=0.6)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step along the direction")
    axes[0].set_ylabel("training loss")
    return fig


def _lr_figure(r: LRRangeResult, current: float | None):
    fig, (ax,) = new_figure(1, width=6.0, height=3.2)
    ax.semilogx(r.lrs, r.smoothed_losses, color="C0", label="smoothed loss")
    if current:
        ax.axvline(current, color="k", lw=1, label=f"current lr {current:.3g}")
    if r.suggested_lr:
        ax.axvline(
            r.suggested_lr,
            color="C2",
            ls="--",
            lw=1,
            label=f"steepest descent {r.suggested_lr:.3g}",
        )
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=7)
    return fig


def _section_rows(sections: tuple[CheckupSection, ...]) -> list[tuple]:
    return [(s.title, s.status, f"{s.seconds:.1f}", s.hvps) for s in sections]


def render_sections(c: Checkup, out_dir: Path) -> list[Section]:
    """The checkup page's sections for ``c``, in reading order (figures written to ``out_dir``)."""
    d = c.diagnosis
    sections = []
    # 1. Verdict and tested prescriptions.
    verdict = f"{d.cause.replace('_', ' ').upper()}: {d.summary}"
    body = paragraph(verdict, "verdict" if d.cause in ("progressing", "converged") else "warn")
    body += prescriptions_table(d)
    fig = trial_figure(d)
    if fig is not None:
        body += figure(
            save(fig, out_dir, "checkup-trials.png"),
            "Each prescription's trial from an exact snapshot, on the same batches as the control that "
            "continued unchanged (black); ranked by the loss reached.",
        )
    body += paragraph(
        "Apply the first one in your loop: opt = d.prescriptions[0].apply(model, opt) (it returns "
        "the optimizer to continue with), or from the command line: lossdoctor train --treat."
    )
    body += paragraph(_cost(c, "doctor"))
    sections.append(Section("verdict", "Verdict and tested prescriptions", body))
    # 2. History.
    m = d.measurements
    body = figure(
        save(_history_figure(c), out_dir, "checkup-history.png"),
        f"The loss history ({c.history_source}) with the window the verdict read.",
    )
    if m is not None:
        t = m.trend
        body += table(
            [
                "window",
                "start (median)",
                "end (median)",
                "relative drop",
                "± s.e.",
                "threshold",
                "stalled",
            ],
            [
                (
                    t.window,
                    fmt(t.start, 5),
                    fmt(t.end, 5),
                    f"{t.relative_drop:+.2%}",
                    f"{t.drop_se:.2%}",
                    f"{t.threshold:.2%}",
                    {True: "yes", False: "no", None: "open"}[t.stalled],
                )
            ],
            left=0,
        )
    body += "<ul>" + "".join(f"<li>{esc(e)}</li>" for e in d.evidence) + "</ul>"
    sections.append(Section("history", "The loss history and the evidence", body))
    # 3. Curvature.
    body = ""
    if m is not None and m.lambda_max is not None:
        edge = d.max_stable_lr
        body += paragraph(
            f"λ_max = {fmt(m.lambda_max, 5)} (± {fmt(m.lambda_max_error, 2)}); lr-scaled sharpness S = "
            f"{fmt(m.lr_sharpness, 4)} against the stability limit {fmt(m.threshold, 3)} "
            f"({m.optimizer}); the stability edge is lr = {fmt(edge, 4)}, evidence, not advice."
        )
    if c.spectrum is not None:
        s = c.spectrum
        body += table(
            ["#", "eigenvalue", "residual", "error bound", "converged"],
            [
                (i, fmt(v, 6), fmt(r, 2), fmt(b, 2), "yes" if ok else "NO")
                for i, (v, r, b, ok) in enumerate(
                    zip(s.eigenvalues, s.residual_norms, s.error_bounds, s.converged)
                )
            ],
            left=0,
        )
    if c.density is not None:
        body += figure(
            save(_density_figure(c.density), out_dir, "checkup-density.png"),
            "Spectral density of the Hessian (stochastic Lanczos quadrature).",
        )
    if c.layers is not None and c.layers.rows:
        body += figure(
            save(_layers_figure(c.layers), out_dir, "checkup-layers.png"),
            "Each block's lr-scaled sharpness (or λ_max without an optimizer); red blocks break stability.",
        )
        body += table(
            ["block", "type", "params", "λ_max", "S_b", "|grad|"],
            [
                (
                    r.name,
                    r.module_type,
                    r.numel,
                    fmt(r.lambda_max),
                    fmt(r.lr_sharpness),
                    fmt(r.grad_norm),
                )
                for r in c.layers.rows
            ],
            left=2,
        )
    body += paragraph(_cost(c, "spectrum", "density", "layers"))
    sections.append(Section("curvature", "Curvature", body))
    # 4. Critical point.
    body = ""
    if c.critical is not None:
        cp = c.critical
        body += paragraph(
            f"{cp.kind.replace('_', ' ')}: gradient norm {fmt(cp.grad_norm)} against the tolerance "
            f"{fmt(cp.grad_tol)}; smallest eigenvalue {fmt(cp.min_eigenvalue, 4)}, largest "
            f"{fmt(cp.max_eigenvalue, 4)}; minimum ratio {cp.minimum_ratio:.3f} ± "
            f"{cp.minimum_ratio_error:.3f} ({cp.ratio_method})."
        )
        if not bool(np.all(cp.converged)):
            body += paragraph(
                "Not every extreme eigenpair was certified within the checkup's budget (at a "
                "symmetric point the search for copies of a repeated eigenvalue can outlast it): a "
                "negative smallest eigenvalue is still a certified direction of negative curvature, "
                "but a positive one may be an overestimate."
            )
    body += paragraph(_cost(c, "critical", "escape"))
    sections.append(Section("critical", "Critical point", body))
    # 5. Landscape, noise, lr range.
    body = ""
    if any(x is not None for x in (c.landscape_top, c.landscape_random, c.escape_profile)):
        body += figure(
            save(_profiles_figure(c), out_dir, "checkup-landscape.png"),
            "The loss through the current point (0) along the top eigenvector (span: where a bowl of "
            "that curvature doubles the loss), a random filter-normalized direction, and the escape "
            "direction at a saddle.",
        )
    if c.noise is not None:
        body += paragraph(str(c.noise))
    if c.lr_range is not None:
        body += figure(
            save(_lr_figure(c.lr_range, c.diagnosis.lr), out_dir, "checkup-lr-range.png"),
            "Learning-rate range test over three decades around the current lr (the model and "
            "optimizer are put back afterwards).",
        )
    body += paragraph(_cost(c, "landscape-top", "landscape-random", "noise", "lr-range"))
    body += table(["section", "status", "seconds", "products"], _section_rows(c.sections), left=2)
    sections.append(Section("landscape", "Landscape, gradient noise and learning rate", body))
    return sections


def write(c: Checkup, out_dir: str | Path, *, title: str = "lossdoctor checkup") -> Path:
    """Write ``out_dir/index.html``, ``out_dir/results.json`` and the figures; returns the page."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sections = render_sections(c, out)
    intro = (
        f"{c.num_params} parameters, {c.num_samples} samples measured in {c.mode} mode; {c.seconds:.0f} s of a "
        f"{c.budget:.0f} s budget"
        + ("; INTERRUPTED: some sections did not finish." if c.interrupted else ".")
    )
    atomic_write_text(
        out, "results.json", json.dumps(c.to_dict(), indent=1, default=lambda v: None)
    )
    return write_page(out, sections, title=title, intro=intro)


def notebook_html(c: Checkup) -> str:
    """A compact view for a notebook: the verdict, the prescriptions, the trial curves inline."""
    d = c.diagnosis
    fig = trial_figure(d)
    img = inline_png(fig) if fig is not None else ""
    rows = _section_rows(c.sections)
    return (
        f'{CSS}<div class="ld"><p class="verdict"><b>{esc(d.cause.replace("_", " "))}</b>: {esc(d.summary)}</p>'
        + prescriptions_table(d)
        + img
        + table(["section", "status", "seconds", "products"], rows, left=2)
        + "</div>"
    )


def monitor_checkup(monitor: Any, optimizer: Any, *, budget: float = BUDGET) -> Checkup:
    """The checkup of the model a Monitor watches, on the losses it has recorded so far."""
    return checkup(
        monitor.model,
        monitor.loss_fn,
        monitor.data,
        history=list(monitor.record.losses),
        optimizer=optimizer,
        budget=budget,
        window=monitor.window,
        train_step=monitor.train_step,
    )


def attach_checkup(
    monitor: Any,
    optimizer: Any,
    out_dir: str | Path,
    *,
    budget: float = BUDGET,
    every_stall: bool = False,
) -> Any:
    """Make a :class:`~lossdoctor.Monitor` write the checkup page when it diagnoses a stall.

    The page goes to ``out_dir`` at the first stalled diagnosis (with ``every_stall``, to
    ``out_dir/step-N`` at each one). The Monitor's own callback still runs first. The checkup
    costs up to ``budget`` seconds of the training run, each time it writes.

    Examples:
        >>> from lossdoctor.report.checkup import attach_checkup             # doctest: +SKIP
        >>> monitor = attach_checkup(ld.Monitor(model, loss_fn, data), optimizer, "checkup-report")  # doctest: +SKIP

    Returns:
        The monitor, so the call can wrap its construction.
    """
    budget = check_float(
        budget, "budget", above=0.0, hint="The checkup's time budget in seconds, e.g. 90."
    )
    check_optimizer(optimizer)
    if not hasattr(monitor, "record") or not hasattr(monitor, "callback"):
        raise TypeError(f"monitor must be a lossdoctor.Monitor, got {type(monitor).__name__}.")
    out = Path(out_dir)
    previous = monitor.callback
    written: list[Path] = []

    def on_diagnosis(diagnosis: Any) -> None:
        if previous is not None:
            previous(diagnosis)
        if not diagnosis.stalled or (written and not every_stall):
            return
        written.append(
            write(
                monitor_checkup(monitor, optimizer, budget=budget),
                out / f"step-{diagnosis.step}" if every_stall else out,
            )
        )

    monitor.callback = on_diagnosis
    monitor.checkup_pages = written
    return monitor


def render_example(c: Checkup, out_dir: Path) -> Section:
    """The tour's section: the example checkup page written beside the tour, and a link to it."""
    write(c, Path(out_dir) / "checkup", title="lossdoctor checkup: an MNIST-1D MLP at a saddle")
    top = c.diagnosis.top
    body = (
        paragraph(
            f"An MNIST-1D tanh MLP whose weights all start at zero, stalled at a saddle, run through "
            f"ld.checkup(model, loss_fn, data, history=losses, optimizer=opt) as a user would run it "
            f"on their own model ({c.seconds:.1f} s). The doctor says: {c.diagnosis.summary.rstrip('.')}."
            + (f" First prescription: {top.text}." if top is not None else "")
        )
        + '<p><a href="checkup/index.html">Open the checkup page</a>: the verdict and the tested '
        "prescriptions with their trial curves first, then the loss history, the curvature, the critical "
        "point, the landscape, the noise scale and the lr range.</p>"
    )
    return Section("checkup", "The checkup page on a stalled model", body)
