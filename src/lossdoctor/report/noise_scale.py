"""Report section for the gradient noise scale.

B_simple along training, and the sweep's time and updates to the target loss against batch size,
with the recommended batch marked."""

from __future__ import annotations

from pathlib import Path

from .._results import fmt
from ..studies.noise_scale import NoiseScaleStudy
from .batch_time import batch_axis
from .figures import new_figure, save
from .html import Section, figure, paragraph, table


def render(study: NoiseScaleStudy, out_dir: Path) -> Section:
    """The report section for the gradient noise scale: its figures (PNGs written to ``out_dir``), tables and text."""
    fig, (ax_b, ax_t, ax_u) = new_figure(3, width=4.2, height=3.6)
    values = [ns.b_simple for _, _, ns in study.points]
    errs = [ns.standard_error for _, _, ns in study.points]
    ax_b.bar(range(len(values)), values, yerr=errs, color="C2", capsize=3)
    ax_b.set_xticks(range(len(values)))
    ax_b.set_xticklabels(
        [f"{w.split(', ')[-1]}\nloss {loss:.2g}" for w, loss, _ in study.points], fontsize=7
    )
    ax_b.set_title("B_simple = tr(Sigma)/|G|^2 (± bootstrap s.e.)", fontsize=9)
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
            fmt(ns.b_simple),
            fmt(ns.standard_error),
            f"{fmt(ns.interval[0])}..{fmt(ns.interval[1])}",
            fmt(ns.trace_sigma),
            fmt(ns.grad_norm_sq),
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
    text = (
        f"McCandlish et al.'s two-batch estimator: squared gradient norms of batches of {ns0.small_batch} and "
        f"{ns0.big_batch} samples (drawn with replacement), {ns0.pairs} pairs per point, give unbiased tr(Sigma) "
        "and |G|^2; their ratio B_simple is the batch size at which the gradient's noise and signal are equal. "
        "Measured along the sweep's smallest-batch run (seed 0): from "
        f"{fmt(first.b_simple)} at initialization to {fmt(last.b_simple)} at training loss {last.loss:.3g} "
        f"({'it grows as the gradient shrinks faster than its noise' if last.b_simple > first.b_simple else 'it did not grow here'}). At the target training loss {study.target_loss:g} it recommends batch "
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
            "Left: B_simple at initialization and at the sweep's milestones. Middle and right: training "
            "seconds and updates to reach the target loss against batch size (mean over the seeds that got "
            "there), with B_simple (dashed) and the batch at which samples-to-target double (dotted).",
        )
        + table(
            [
                "where",
                "train loss",
                "B_simple",
                "s.e.",
                "68% interval",
                "tr(Sigma)",
                "|G|^2",
                "suggested batch",
            ],
            rows,
        )
        + table(["batch", "reached", "seconds to target", "updates", "samples"], sweep_rows)
    )
    return Section("noise-scale", "Batch size IV: the gradient noise scale", body)
