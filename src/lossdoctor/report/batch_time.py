"""Report section for the batch-time study.

Seconds per update and per epoch against batch size (log-log), with the updates-per-epoch count."""

from __future__ import annotations

from pathlib import Path

from .._results import fmt
from ..studies.batch_time import BatchTimeStudy
from ..training.timing import BatchTiming
from .figures import new_figure, save, save_new
from .html import Section, figure, paragraph, table


def batch_axis(ax, sizes) -> None:
    """Log x axis labelled at the batch sizes themselves."""
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    ax.set_xticks(list(sizes))
    ax.set_xticklabels([str(b) for b in sizes], fontsize=7, rotation=45)
    ax.xaxis.set_minor_formatter(NullFormatter())


def _draw(ax_u, ax_e, t: BatchTiming, color: str, name: str) -> None:
    b = t.batch_sizes
    ax_u.errorbar(
        b,
        t.seconds_per_update,
        yerr=[
            [m - lo for m, lo in zip(t.seconds_per_update, t.seconds_per_update_min)],
            [hi - m for m, hi in zip(t.seconds_per_update, t.seconds_per_update_max)],
        ],
        marker="o",
        color=color,
        label=f"{name}: time per update",
        capsize=2,
    )
    ax_u.plot(
        b,
        [t.seconds_per_update[0] * x / b[0] for x in b],
        color=color,
        ls=":",
        lw=0.8,
        label=f"{name}: proportional to batch (no parallelism)",
    )
    if t.saturation_batch_size is not None:  # None: an interrupted timing names no saturation point
        ax_u.axvline(t.saturation_batch_size, color=color, ls="--", lw=0.8)
    ax_e.plot(b, t.seconds_per_epoch, marker="o", color=color, label=f"{name}: time per epoch")
    for x, y, u in zip(b, t.seconds_per_epoch, t.updates_per_epoch):
        ax_e.annotate(
            str(u),
            (x, y),
            textcoords="offset points",
            xytext=(0, 6),
            fontsize=7,
            ha="center",
            color=color,
        )


def render(study: BatchTimeStudy, out_dir: Path) -> Section:
    """The report section for the batch-time study: its figures (PNGs written to ``out_dir``), tables and text."""
    fig, (ax_u, ax_e) = new_figure(2, width=5.6, height=4.0)
    threads = f"{study.threads} thread{'s' if study.threads != 1 else ''}"
    _draw(ax_u, ax_e, study.cpu, "C0", f"CPU ({threads})")
    if study.cuda is not None:
        _draw(ax_u, ax_e, study.cuda, "C3", "GPU")
    for ax, title in (
        (ax_u, "seconds per update (forward + backward + step)"),
        (ax_e, f"seconds per epoch of {study.num_train} samples (labels: updates per epoch)"),
    ):
        batch_axis(ax, study.cpu.batch_sizes)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    name = save(fig, out_dir, "batch-time.png")
    t = study.cpu
    rows = [
        (b, fmt(s), fmt(lo), fmt(hi), u, fmt(e), fmt(r))
        for b, s, lo, hi, u, e, r in zip(
            t.batch_sizes,
            t.seconds_per_update,
            t.seconds_per_update_min,
            t.seconds_per_update_max,
            t.updates_per_epoch,
            t.seconds_per_epoch,
            t.samples_per_second,
        )
    ]
    i1, il = 0, len(t.batch_sizes) - 1
    text = (
        f"{study.model} on this machine's CPU ({threads}), {t.repeats} timed updates per batch "
        f"size after {t.warmup} warm-up updates (median shown, bars: min-max). One update with batch "
        f"{t.batch_sizes[il]} costs {fmt(t.seconds_per_update[il] / t.seconds_per_update[i1])}x one with batch "
        f"{t.batch_sizes[i1]}, not {t.batch_sizes[il] // t.batch_sizes[i1]}x: an epoch takes "
        f"{fmt(t.seconds_per_epoch[i1])} s at batch {t.batch_sizes[i1]} ({t.updates_per_epoch[i1]} updates) and "
        f"{fmt(t.seconds_per_epoch[il])} s at batch {t.batch_sizes[il]} ({t.updates_per_epoch[il]} update). "
        f"Throughput is within 80% of its best from batch {t.saturation_batch_size} on (dashed line): beyond "
        "it the hardware is saturated and time per update grows with the batch. The lecture's MNIST: "
        + ", ".join(f"batch {b} -> {u} updates per epoch" for b, u in study.lecture_updates.items())
        + "."
    )
    if study.cuda is not None:
        c = study.cuda
        text += (
            f" On the GPU an epoch takes {fmt(c.seconds_per_epoch[0])} s at batch {c.batch_sizes[0]} and "
            f"{fmt(c.seconds_per_epoch[-1])} s at batch {c.batch_sizes[-1]}; saturation near batch "
            f"{c.saturation_batch_size}."
        )
    else:
        text += " No GPU was available in this run; on one, the flat part of the curve extends much further."
    body = (
        paragraph(text)
        + figure(
            name,
            "Left: time per update against batch size (log-log), with the line a fully serial "
            "machine would follow. Right: time per epoch; each point is labelled with its updates per epoch.",
        )
        + table(
            ["batch", "s/update (median)", "min", "max", "updates/epoch", "s/epoch", "samples/s"],
            rows,
        )
    )
    return Section("batch-time", "Batch size I: time per update and per epoch", body)


def timing_figure(timing: BatchTiming, path: Path) -> Path:
    """One timing's log-log plot alone, saved to ``path`` (``lossdoctor batch time --plot``)."""
    fig, (ax_u, ax_e) = new_figure(2, width=5.2, height=3.8)
    _draw(ax_u, ax_e, timing, "C0", timing.device)
    for ax, title in (
        (ax_u, "seconds per update"),
        (ax_e, "seconds per epoch (labels: updates per epoch)"),
    ):
        batch_axis(ax, timing.batch_sizes)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    return save_new(fig, path)
