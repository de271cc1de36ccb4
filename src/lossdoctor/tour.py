"""The tour: every study of the lecture on the embedded default, written to one HTML report.

Each section's result is saved to ``results.json`` (and the page rewritten) as soon as it is
finished, so an interrupted tour keeps every section it completed, and a rerun into the same
folder keeps and skips them (``force=True`` redoes them; the old version stays until its
replacement is finished). What a section was run with (quick or full, the lossdoctor version)
and its rendered HTML are kept in ``.tour-sections.json``; a section is reused only when that,
its entry in ``results.json`` and its figures are all there. Every file is written atomically
inside the folder (a temporary file, then a rename), and a symlink planted in the folder is
replaced, never written through or read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _interrupt
from ._files import atomic_write_text, read_text_inside
from ._version import __version__
from .progress import Progress
from .report import batch_sweep as batch_sweep_report
from .report import batch_time as batch_time_report
from .report import checkup as checkup_report
from .report import critical_regression as critical_regression_report
from .report import critical_toy as critical_toy_report
from .report import doctor_validation as doctor_validation_report
from .report import flat_sharp as flat_sharp_report
from .report import flat_surface as flat_surface_report
from .report import l2_smoothing as l2_report
from .report import layers as layers_report
from .report import lr_range as lr_range_report
from .report import noise_scale as noise_scale_report
from .report import rare_minima as rare_minima_report
from .report import spectrum as spectrum_report
from .report import valley as valley_report
from .report import warmup as warmup_report
from .report.html import Section, write_page
from .studies import batch_sweep as batch_sweep_study
from .studies import batch_time as batch_time_study
from .studies import checkup_example as checkup_study
from .studies import critical_regression as critical_regression_study
from .studies import critical_toy as critical_toy_study
from .studies import doctor_validation as doctor_validation_study
from .studies import flat_sharp as flat_sharp_study
from .studies import flat_surface as flat_surface_study
from .studies import l2_smoothing as l2_study
from .studies import layers as layers_study
from .studies import lr_range as lr_range_study
from .studies import noise_scale as noise_scale_study
from .studies import rare_minima as rare_minima_study
from .studies import spectrum as spectrum_study
from .studies import valley as valley_study
from .studies import warmup as warmup_study


@dataclass(frozen=True)
class TourSection:
    """One section of the tour report: its key, title, the study it runs and how it is drawn."""

    key: str
    title: str
    run: Callable[..., Any]  # run(quick=..., progress=...) -> result with to_dict()
    render: Callable[[Any, Path], Section]


SECTIONS: list[TourSection] = [
    TourSection("spectrum", "Hessian spectrum", spectrum_study.run, spectrum_report.render),
    TourSection(
        "critical-toy",
        "Critical points: the lecture's saddle",
        critical_toy_study.run,
        critical_toy_report.render,
    ),
    TourSection(
        "critical-regression",
        "Critical points: the homework regression",
        critical_regression_study.run,
        critical_regression_report.render,
    ),
    TourSection(
        "rare-minima",
        "Critical points: local minima are rare",
        rare_minima_study.run,
        rare_minima_report.render,
    ),
    TourSection(
        "valley",
        "The loss stalls: oscillating in an elongated valley",
        valley_study.run,
        valley_report.render,
    ),
    TourSection(
        "flat-surface",
        "The flat surface: MSE vs cross-entropy",
        flat_surface_study.run,
        flat_surface_report.render,
    ),
    TourSection("layers", "Curvature layer by layer", layers_study.run, layers_report.render),
    TourSection(
        "doctor-validation",
        "The stall doctor on held-out runs: causes and fixes",
        doctor_validation_study.run,
        doctor_validation_report.render,
    ),
    TourSection(
        "checkup",
        "The checkup page on a stalled model",
        checkup_study.run,
        checkup_report.render_example,
    ),
    TourSection("batch-time", "Batch size: time", batch_time_study.run, batch_time_report.render),
    TourSection(
        "batch-sweep",
        "Batch size: training, testing, sharpness",
        batch_sweep_study.run,
        batch_sweep_report.render,
    ),
    TourSection(
        "flat-sharp",
        "Batch size: flat vs. sharp minima",
        flat_sharp_study.run,
        flat_sharp_report.render,
    ),
    TourSection(
        "noise-scale",
        "Batch size: gradient noise scale",
        noise_scale_study.run,
        noise_scale_report.render,
    ),
    TourSection("l2", "L2 regularization without biases", l2_study.run, l2_report.render),
    TourSection("warmup", "Learning-rate warm-up", warmup_study.run, warmup_report.render),
    TourSection("lr-range", "Learning-rate range test", lr_range_study.run, lr_range_report.render),
]

INTRO = (
    "Why did the loss stop going down? Each section runs one study of the lecture on built-in "
    "MNIST-1D problems and toys, generated offline; every number below was measured in this run."
)


STATE = ".tour-sections.json"  # per finished section: settings, version, rendered HTML


def _version() -> str:
    return __version__


def _read_json(out: Path, name: str) -> dict[str, Any]:
    text = read_text_inside(out, name)
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _figures_present(out: Path, body: str) -> bool:
    return all(
        (out / src).is_file() and not (out / src).is_symlink()
        for src in re.findall(r'src="([^"]+)"', body)
        if "/" not in src and not src.startswith("data:")
    )


def _finished(out: Path, quick: bool) -> tuple[dict[str, Any], dict[str, Section]]:
    """The sections an earlier run finished in ``out`` with the same settings and version.

    Their results and their rendered HTML."""
    state, results = _read_json(out, STATE), _read_json(out, "results.json")
    kept_results: dict[str, Any] = {}
    kept: dict[str, Section] = {}
    for section in SECTIONS:
        entry = state.get(section.key)
        if not (
            isinstance(entry, dict)
            and entry.get("quick") == quick
            and entry.get("version") == _version()
            and isinstance(entry.get("body"), str)
            and section.key in results
        ):
            continue
        if not _figures_present(out, entry["body"]):
            continue
        kept_results[section.key] = results[section.key]
        kept[section.key] = Section(section.key, section.title, entry["body"])
    return kept_results, kept


def run_tour(
    out_dir: str | Path,
    *,
    quick: bool = True,
    only: list[str] | None = None,
    progress_for: Callable[[str], Progress | None] | None = None,
    force: bool = False,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Run the sections (all, or those named in ``only``) and write ``out_dir/index.html`` and ``out_dir/results.json``.

    ``progress_for(title)`` gives each section a progress callback.

    Sections finished by an earlier run into ``out_dir`` (same ``quick``, same version) are kept
    and skipped unless ``force``; the page shows every finished section of the folder. A Ctrl-C
    stops the tour with every finished section saved (``KeyboardInterrupt`` propagates); the
    section in progress is not saved, whatever its inner calls returned.
    """
    out = Path(out_dir)
    unknown = set(only or ()) - {s.key for s in SECTIONS}
    if unknown:
        raise ValueError(
            f"unknown tour sections {sorted(unknown)}; available: {[s.key for s in SECTIONS]}."
        )
    out.mkdir(parents=True, exist_ok=True)
    chosen = SECTIONS if not only else [s for s in SECTIONS if s.key in only]
    results, rendered = _finished(out, quick)
    state = {
        key: {"quick": quick, "version": _version(), "body": section.body}
        for key, section in rendered.items()
    }
    reused = [s.key for s in chosen if s.key in rendered and not force]
    if reused and log is not None:
        log(
            f"kept {len(reused)} finished section(s) from an earlier run in {out}: {', '.join(reused)} "
            "(--force redoes them)"
        )

    def write() -> Path:
        atomic_write_text(out, "results.json", json.dumps(results, indent=1))
        atomic_write_text(out, STATE, json.dumps(state))
        ordered = [rendered[s.key] for s in SECTIONS if s.key in rendered]
        return write_page(out, ordered, title="lossdoctor tour", intro=INTRO)

    page = write()
    for section in chosen:
        if section.key in reused:
            continue
        progress = progress_for(section.title) if progress_for else None
        mark = _interrupt.count()
        with (
            _interrupt.propagating()
        ):  # a study cannot use a partial result: Ctrl-C stops the section
            result = section.run(quick=quick, progress=progress)
        if _interrupt.count() != mark or _interrupt.was_interrupted(result):
            raise KeyboardInterrupt  # an inner call turned a Ctrl-C into a partial result: not saved
        body = section.render(result, out)
        results[section.key] = result.to_dict()
        rendered[section.key] = body
        state[section.key] = {"quick": quick, "version": _version(), "body": body.body}
        page = write()
    return page
