"""Report section for the gradient noise scale.

B_simple along training with its confidence interval (unbounded above where |G|^2 is not clearly
above its noise), and the sweep's time and updates to the target loss against batch size, with the
recommended batch marked."""

from __future__ import annotations

import math
from pathlib import Path

from .._results import fmt
from ..analysis.noise_scale import NoiseScale
from ..studies.noise_scale import NoiseScaleStudy
from .batch_time import batch_axis
from .figures import new_figure, save
from .html import Section, figure, paragraph, table


def interval_text(ns: NoiseScale) -> str:
    """The interval as the table shows it: ``lo..hi``, or ``lo..inf (no upper bound)``."""
    lo, hi = ns.interval
    return f"{fmt(lo)}..{fmt(hi)}" if ns.bounded else f"{fmt(lo)}..inf (no upper bound)"


def _draw_intervals(ax, points: list[NoiseScale]) -> None:
    """Each interval as a bar, an arrow where it has no upper end, the estimate as a dot.

    The dot only where the point estimate is finite and >= 0 (a ratio of noisy means can be < 0)."""
    ends = [v for ns in points for v in (*ns.interval, ns.b_simple) if math.isfinite(v) and v > 0]
    top = max(ends, default=1.0)
    for i, ns in enumerate(points):
        lo, hi = ns.interval
        if ns.bounded:
            ax.vlines(i, lo, hi, lw=8, color="C2", alpha=0.6)
        else:  # runs off to infinity from its lower end
            ax.annotate(
                "",
                xy=(i, 1.2 * top),
                xytext=(i, lo),
                arrowprops={"arrowstyle": "-|>", "color": "C3", "lw": 2},
            )
            ax.text(i, 1.22 * top, "no upper bound", ha="center", va="bottom", fontsize=6)
        if math.isfinite(ns.b_simple) and ns.b_simple >= 0:
            ax.plot(i, ns.b_simple, "o", color="k", ms=4)
    ax.set_ylim(0, (1.35 if any(not ns.bounded for ns in points) else 1.1) * top)
    ax.set_xlim(-0.5, len(points) - 0.5)


def _growth(first: NoiseScale, last: NoiseScale) -> str:
    """Whether B_simple grew, said only as far as the two intervals separate."""
    if last.interval[0] > first.interval[1]:
        return (
            "it grows as the gradient shrinks faster than its noise: the intervals do not overlap"
        )
    if first.interval[0] > last.interval[1]:
        return "it fell: the intervals do not overlap"
    return "the intervals overlap: no change shown at this many pairs"


def render(study: NoiseScaleStudy, out_dir: Path) -> Section:
    """The report section for the gradient noise scale: its figures (PNGs written to ``out_dir``), tables and text."""
    fig, (ax_b, ax_t, ax_u) = new_figure(3, width=4.2, height=3.6)
    estimates = [ns for _, _, ns in study.points]
    _draw_intervals(ax_b, estimates)
    ax_b.set_xticks(range(len(estimates)))
    ax_b.set_xticklabels(
        [f"{w.split(', ')[-1]}\nloss {loss:.2g}" for w, loss, _ in study.points], fontsize=7
    )
    level = f"{100 * estimates[0].level:.3g}%"
    ax_b.set_title(f"B_simple = tr(Sigma)/|G|^2 ({level} Fieller interval)", fontsize=9)
    b = study.batch_sizes
    for ax, vals, title in (
        (ax_t, study.seconds_to_target, f"training seconds to loss {study.target_loss:g}"),
        (ax_u, study.updates_to_target, f"updates to loss {study.target_loss:g}"),
    ):
        pts = [(x, v) for x, v in zip(b, vals) if v is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", color="C0")
        ax.axvline(
            study.recommended_batch,
            color="C2",
            ls="--",
            label=f"B_simple = {study.recommended_batch}",
        )
        if study.samples_double_at:
            ax.axvline(
                study.samples_double_at,
                color="C1",
                ls=":",
                label=f"samples 2x min: {study.samples_double_at}",
            )
        batch_axis(ax, b)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    name = save(fig, out_dir, "noise-scale.png")
    rows = [
        (
            w,
            f"{loss:.3g}",
            interval_text(ns),
            fmt(ns.b_simple),
            fmt(ns.standard_error),
            f"{fmt(ns.trace_sigma)} ± {fmt(ns.trace_sigma_standard_error)}",
            f"{fmt(ns.grad_norm_sq)} ± {fmt(ns.grad_norm_sq_standard_error)}",
            ns.suggested_batch_size,
        )
        for w, loss, ns in study.points
    ]
    sweep_rows = [
        (
            x,
            f"{r}/{study.seeds}",
            "-" if s is None else f"{s:.2f} ± {sd:.2f}",
            "-" if u is None else f"{u:.0f}",
            "-" if n is None else f"{n:.0f}",
        )
        for x, r, s, sd, u, n in zip(
            b,
            study.reached,
            study.seconds_to_target,
            study.seconds_to_target_std,
            study.updates_to_target,
            study.samples_to_target,
        )
    ]
    ns0 = study.points[0][2]
    first, last = study.points[0][2], study.points[-1][2]
    unbounded = [w for w, _, ns in study.points if not ns.bounded]
    text = (
        f"McCandlish et al.'s two-batch estimator: squared gradient norms of batches of {ns0.small_batch} and "
        f"{ns0.big_batch} samples (drawn with replacement), {ns0.pairs} pairs per point, give unbiased tr(Sigma) "
        "and |G|^2; their ratio B_simple is the batch size at which the gradient's noise and signal are equal. "
        f"Its uncertainty is Fieller's {level} interval for a ratio of means: where |G|^2 is not clearly above "
        "its own noise (near a minimum) the ratio may be arbitrarily large and the interval has no upper end"
        + (f" ({', '.join(unbounded)} here)" if unbounded else " (every point here is bounded)")
        + ". Measured along the sweep's smallest-batch run (seed 0): from "
        f"{interval_text(first)} at initialization to {interval_text(last)} at training loss {last.loss:.3g} "
        f"({_growth(first, last)}). At the target training loss {study.target_loss:g} it recommends batch "
        f"{study.recommended_batch}. The sweep itself: time to reach that loss stops improving (by more than 10% "
        f"per step up in batch size) at batch "
        f"{study.time_stops_improving_at or 'none of those tried: it still improves at the largest'}, and the samples needed reach twice "
        f"their minimum (McCandlish's empirical critical batch) at "
        f"{study.samples_double_at if study.samples_double_at else 'none of the batch sizes tried'}. "
        "On a CPU the time per update grows with the batch early (little parallelism), so wall-clock time stops "
        "improving sooner than the update count does; on a GPU the two agree better."
    )
    body = (
        paragraph(text)
        + figure(
            name,
            "Left: B_simple at initialization and at the sweep's milestones: "
            f"bars over the {level} intervals, arrows where an interval has no upper end, dots at the point estimates. Middle and right: training "
            "seconds and updates to reach the target loss against batch size (mean over the seeds that got "
            "there), with B_simple (dashed) and the batch at which samples-to-target double (dotted).",
        )
        + table(
            [
                "where",
                "train loss",
                f"B_simple ({level} interval)",
                "point estimate",
                "s.e.",
                "tr(Sigma) ± s.e.",
                "|G|^2 ± s.e.",
                "suggested batch",
            ],
            rows,
        )
        + table(["batch", "reached", "seconds to target", "updates", "samples"], sweep_rows)
    )
    return Section("noise-scale", "Batch size IV: the gradient noise scale", body)
